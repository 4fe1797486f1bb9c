"""Federator's own aggregators against Flower's strategies on the same Message inputs.

Every property builds the same replies twice (Flower's median and trimmed mean empty the
replies they read), runs Flower's strategy on one copy and ours on the other, and asks for the
same arrays (same keys, shapes and dtypes; values within 1e-6 of the inputs' scale — Flower
sums in float32, we in float64) and the same metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
from fakes import instruction, server_identity, without_gc_collect
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.multikrum import select_multikrum
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federator import AggregationFailed
from federator.client.wire import NUM_EXAMPLES
from federator.strategies import STRATEGIES, Sampling
from federator.strategies.aggregation import (
    Bulyan,
    FastAggregation,
    Median,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)
from federator.strategies.aggregation import krum as ours_krum
from federator.strategies.aggregation.updates import decode, weights_of

Model = dict[str, np.ndarray]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _reply(i: int, model: Model, weight: float) -> Message:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=i + 1)
    metrics = MetricRecord({NUM_EXAMPLES: weight, "loss": 0.25 * i, "acc": [1.0 * i, 2.0]})
    arrays = ArrayRecord({k: Array(v) for k, v in model.items()})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ins)


def _replies(models: Sequence[Model], weights: Sequence[float]) -> list[Message]:
    return [_reply(i, m, w) for i, (m, w) in enumerate(zip(models, weights, strict=True))]


def _scale(models: Sequence[Model]) -> float:
    return max([1.0] + [float(np.abs(v).max()) for m in models for v in m.values() if v.size])


def _assert_same(ours: ArrayRecord, flower: ArrayRecord, scale: float) -> None:
    assert list(ours.keys()) == list(flower.keys())
    for key in flower:
        a, b = ours[key].numpy(), flower[key].numpy()
        assert (a.dtype, a.shape) == (b.dtype, b.shape), key
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale, err_msg=key)


def _assert_metrics(ours: MetricRecord | None, flower: MetricRecord | None) -> None:
    assert ours is not None
    assert flower is not None
    assert ours.keys() == flower.keys()
    for key in flower:
        np.testing.assert_allclose(ours[key], flower[key], rtol=1e-12)  # type: ignore[arg-type]


def _compare(
    flower: fl.FedAvg,
    ours: Callable[[fl.FedAvg], FastAggregation],
    models: list[Model],
    w: list,
    *,
    bitwise: bool = False,
) -> None:
    with without_gc_collect():
        expected, expected_metrics = flower.aggregate_train(1, _replies(models, w))
    got, metrics = ours(flower).aggregate_train(1, _replies(models, w))
    assert expected is not None
    assert got is not None
    _assert_same(got, expected, _scale(models))
    _assert_metrics(metrics, expected_metrics)
    if bitwise:
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())


_VALUES = st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def _models(draw: st.DrawFn, min_n: int = 1, max_n: int = 12) -> list[Model]:
    """n replies with the same arrays: 1–3 keys, shapes up to 3-D, float32 or float64."""
    shapes = draw(
        st.dictionaries(
            st.sampled_from(["w", "b", "c"]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5),
            min_size=1,
        )
    )
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(min_n, max_n))
    return [
        {k: draw(hnp.arrays(dtype, s, elements=_VALUES)) for k, s in shapes.items()}
        for _ in range(n)
    ]


_WEIGHTS = st.lists(st.integers(1, 1000), min_size=12, max_size=12)


@FAST
@given(models=_models(), weights=_WEIGHTS)
def test_weighted_mean_equals_flower_fedavg(models: list[Model], weights: list[int]) -> None:
    """Within 1e-6 — in fact bit for bit: the arithmetic is Flower's, in the same order."""
    _compare(
        fl.FedAvg(),
        lambda f: FastAggregation(f, WeightedMean()),
        models,
        weights[: len(models)],
        bitwise=True,
    )


@FAST
@given(models=_models())
def test_median_equals_flower_fedmedian(models: list[Model]) -> None:
    _compare(fl.FedMedian(), lambda f: FastAggregation(f, Median()), models, [1] * len(models))


@FAST
@given(models=_models(), beta=st.floats(0, 0.49))
def test_trimmed_mean_equals_flower(models: list[Model], beta: float) -> None:
    _compare(
        fl.FedTrimmedAvg(beta=beta),
        lambda f: FastAggregation(f, TrimmedMean(beta)),
        models,
        [1] * len(models),
    )


def _exact_scores(models: Sequence[Model], f: int) -> np.ndarray:
    """Krum scores from explicit differences in float64 (no Gram matrix): the reference
    against which near-ties are recognised."""
    flat = np.stack([np.concatenate([m[k].ravel() for k in m]).astype(np.float64) for m in models])
    d = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    k = max(1, len(models) - f - 2)
    return np.sort(d, axis=1)[:, 1 : k + 1].sum(axis=1)


def _clear_choice(models: Sequence[Model], f: int, m: int) -> bool:
    """The m-th and (m+1)-th best exact scores differ clearly (1e-3 of the largest score), so
    float32 rounding in Flower's distances cannot change which replies are selected."""
    s = np.sort(_exact_scores(models, f))
    return m >= len(s) or s[m] - s[m - 1] > 1e-3 * (s[-1] + 1.0)


@st.composite
def _krum_case(draw: st.DrawFn) -> tuple[list[Model], int, int]:
    models = draw(_models(min_n=3, max_n=12))
    f = draw(st.integers(0, (len(models) - 3) // 2))
    m = draw(st.integers(1, len(models)))
    return models, f, m


@FAST
@given(case=_krum_case(), weights=_WEIGHTS)
def test_multikrum_equals_flower(case: tuple[list[Model], int, int], weights: list[int]) -> None:
    """Same selection and aggregate as Flower's MultiKrum. Inputs whose selection is a near-tie
    (`_clear_choice`) are skipped: there Flower's float32 distances, not Krum, decide."""
    models, f, m = case
    assume(_clear_choice(models, f, m))
    _compare(
        fl.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m),
        lambda s: FastAggregation(s, MultiKrum(num_malicious=f, num_to_select=m)),
        models,
        weights[: len(models)],
    )


@FAST
@given(case=_krum_case())
def test_krum_selects_the_replies_flower_selects(case: tuple[list[Model], int, int]) -> None:
    models, f, m = case
    assume(_clear_choice(models, f, m))
    contents = [r.content for r in _replies(models, [1] * len(models))]
    flower = [
        next(i for i, c in enumerate(contents) if c is s) for s in select_multikrum(contents, f, m)
    ]
    ours = ours_krum.select(decode(contents), f, m)
    assert set(ours) == set(flower)


@st.composite
def _bulyan_case(draw: st.DrawFn) -> tuple[list[Model], int]:
    models = draw(_models(min_n=3, max_n=13))
    return models, draw(st.integers(0, (len(models) - 3) // 4))


def _clear_edges(models: Sequence[Model], f: int) -> bool:
    """No coordinate has different values equally far from the median at the edge of the
    β kept by Bulyan (which of them is kept is arbitrary, in Flower as in ours)."""
    theta = len(models) - 2 * f
    beta = theta - 2 * f
    if beta >= theta:
        return True
    contents = [r.content for r in _replies(models, [1] * len(models))]
    chosen = ours_krum.select(decode(contents), f, theta)
    for key in models[0]:
        stack = np.stack([models[i][key].ravel() for i in chosen])
        dist = np.abs(stack - np.median(stack, axis=0))
        edge = np.sort(dist, axis=0)[beta - 1]
        for j in range(stack.shape[1]):
            if (
                np.sort(dist[:, j])[beta] == edge[j]
                and len(set(stack[dist[:, j] == edge[j], j])) > 1
            ):
                return False
    return True


@FAST
@given(case=_bulyan_case())
def test_bulyan_equals_flower(case: tuple[list[Model], int]) -> None:
    """Same as Flower's Bulyan. Skipped: near-tie selections (as for Multi-Krum) and
    coordinates where the β-th and (β+1)-th closest values to the median are different values
    at the same distance (`_clear_edges`)."""
    models, f = case
    assume(_clear_choice(models, f, len(models) - 2 * f))
    assume(_clear_edges(models, f))
    _compare(
        fl.Bulyan(num_malicious_nodes=f),
        lambda s: FastAggregation(s, Bulyan(num_malicious=f)),
        models,
        [1] * len(models),
    )


def test_gram_distances_survive_a_large_common_offset() -> None:
    """Replies close together far from the origin (weights ≫ updates): the centred float64
    Gram matrix still gives the distances computed from explicit differences."""
    rng = np.random.default_rng(7)
    models = [
        {"w": (1000.0 + 1e-3 * rng.standard_normal(5000)).astype(np.float32)} for _ in range(6)
    ]
    contents = [r.content for r in _replies(models, [1] * 6)]
    flat = np.stack([m["w"].astype(np.float64) for m in models])
    exact = ((flat[:, None] - flat[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(ours_krum.distances(decode(contents)), exact, rtol=1e-6)


def test_dtypes_follow_flower_and_fortran_arrays_are_read_in_order() -> None:
    """Integer arrays (BatchNorm's counters) average to float64 as in Flower; a Fortran-ordered
    payload is read by its logical index."""
    a = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    models = [{"n": np.array(4 + i, dtype=np.int64), "w": a * (i + 1)} for i in range(3)]
    for strategy, aggregator in ((fl.FedAvg(), WeightedMean()), (fl.FedMedian(), Median())):
        _compare(strategy, lambda s, agg=aggregator: FastAggregation(s, agg), models, [1, 2, 3])


def test_replies_are_left_intact() -> None:
    replies = _replies([{"w": np.ones(3, np.float32)}] * 3, [1, 1, 1])
    FastAggregation(fl.FedMedian(), Median()).aggregate_train(1, replies)
    assert all("w" in r.content["arrays"] for r in replies)


def test_errors_and_the_weighting_key_are_flowers() -> None:
    """Error replies are left out and the weight is the inner strategy's key, read each round
    (central DP's wrapper changes it after building)."""
    inner = fl.FedAvg()
    replies = _replies([{"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}], [1, 3])
    broken = Message(Error(code=1, reason="x"), reply_to=instruction(RecordDict(), node_id=9))
    arrays, _ = FastAggregation(inner, WeightedMean()).aggregate_train(1, [*replies, broken])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [0.75, 0.75])
    inner.weighted_by_key = "loss"  # reply 0 has loss 0: all weight on reply 1
    arrays, _ = FastAggregation(inner, WeightedMean()).aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 1.0])
    assert FastAggregation(inner, WeightedMean()).aggregate_train(1, [broken]) == (None, None)


def _contents(*models: Model, weights: Sequence[float] | None = None) -> list[RecordDict]:
    return [r.content for r in _replies(models, weights or [1] * len(models))]


def test_bad_inputs_raise_aggregation_failed() -> None:
    f32 = np.float32
    with pytest.raises(AggregationFailed, match="no replies"):
        decode([])
    with pytest.raises(AggregationFailed, match="has arrays"):
        decode(_contents({"w": np.zeros(2, f32)}, {"v": np.zeros(2, f32)}))
    with pytest.raises(AggregationFailed, match="differs between replies"):
        decode(_contents({"w": np.zeros(2, f32)}, {"w": np.zeros(3, f32)}))
    with pytest.raises(AggregationFailed, match="differs between replies"):
        decode(_contents({"w": np.zeros(2, f32)}, {"w": np.zeros(2, np.float64)}))
    with pytest.raises(AggregationFailed, match="sum to 0"):
        weights_of(_contents({"w": np.zeros(2, f32)}, weights=[0]), NUM_EXAMPLES)
    with pytest.raises(AggregationFailed, match="non-negative"):
        weights_of(
            _contents({"w": np.zeros(2, f32)}, {"w": np.zeros(2, f32)}, weights=[2, -1]),
            NUM_EXAMPLES,
        )
    with pytest.raises(AggregationFailed, match="needs at least 4f"):
        Bulyan(num_malicious=1)(_contents(*[{"w": np.zeros(2, f32)}] * 6), NUM_EXAMPLES)


SAMPLING = Sampling(
    fraction_train=1.0,
    fraction_evaluate=1.0,
    min_train_nodes=7,
    min_evaluate_nodes=2,
    min_available_nodes=7,
)


@pytest.mark.parametrize(
    ("name", "aggregator"),
    [
        ("fedavg", WeightedMean),
        ("fedprox", WeightedMean),
        ("krum", MultiKrum),
        ("multikrum", MultiKrum),
        ("fedmedian", Median),
        ("fedtrimmedavg", TrimmedMean),
        ("bulyan", Bulyan),
        ("fedadam", None),
        ("fedyogi", None),
    ],
)
def test_registry_names_plug_in_our_aggregators(name: str, aggregator: type | None) -> None:
    spec = STRATEGIES.get(name)
    params = spec.parse_params(
        {"num_malicious_nodes": 1} if "krum" in name or name == "bulyan" else {}
    )
    base = spec.build(SAMPLING, params)
    wrapped = spec.aggregating(base, params)
    if aggregator is None:
        assert wrapped is base
        return
    assert isinstance(wrapped, FastAggregation)
    assert wrapped.inner is base
    assert type(wrapped.aggregator) is aggregator
    if name == "krum":
        assert wrapped.aggregator == MultiKrum(num_malicious=1, num_to_select=1)
