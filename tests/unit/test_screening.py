"""Screening of client replies and the `Guarded` wrapper around Flower strategies."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fakes import FakeGrid, instruction, server_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg
from hypothesis import given, settings
from hypothesis import strategies as st

from federator.client.wire import LABEL_KEY, META_KEY
from federator.strategies import Guarded, array_specs, screen_replies


def ar(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


ONE_NODE = FakeGrid({1: lambda m: None})
GLOBAL = ar(w=np.zeros((2, 3), np.float32), b=np.zeros(3, np.float32))


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def reply(
    node_id: int,
    *,
    w: np.ndarray | None = None,
    n: object = 10,
    label: str = "",
    extra: dict[str, float] | None = None,
    arrays: ArrayRecord | None = None,
    metrics: MetricRecord | None = None,
) -> Message:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=node_id)
    if arrays is None:
        arrays = ar(
            w=np.full((2, 3), 1.0, np.float32) if w is None else w, b=np.ones(3, np.float32)
        )
    if metrics is None:
        metrics = MetricRecord({"num-examples": n, "loss": 0.5, **(extra or {})})  # type: ignore[dict-item]
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if label:
        content[META_KEY] = ConfigRecord({LABEL_KEY: label})
    return Message(content=content, reply_to=ins)


def refused(m: Message) -> str:
    result = screen_replies([m], expected=array_specs(GLOBAL))
    assert not result.accepted
    return result.rejected[0].reason


def test_good_reply_is_accepted() -> None:
    result = screen_replies([reply(1, label="a")], expected=array_specs(GLOBAL))
    assert [(r.node_id, r.label, r.num_examples) for r in result.accepted] == [(1, "a", 10)]
    assert result.accepted[0].metrics == {"loss": 0.5}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: reply(1, w=np.full((2, 3), np.nan, np.float32)),
            "array 'w' contains NaN or infinite values",
        ),
        (
            lambda: reply(1, w=np.full((2, 3), np.inf, np.float32)),
            "array 'w' contains NaN or infinite values",
        ),
        (
            lambda: reply(1, w=np.zeros((3, 2), np.float32)),
            "array 'w' has shape (3, 2), expected (2, 3)",
        ),
        (
            lambda: reply(1, w=np.zeros((2, 3), np.float64)),
            "array 'w' has dtype float64, expected float32",
        ),
        (lambda: reply(1, arrays=ar(w=np.zeros((2, 3), np.float32))), "missing ['b']"),
        (
            lambda: reply(
                1, arrays=ar(**{k: v.numpy() for k, v in GLOBAL.items()}, x=np.zeros(1, np.float32))
            ),
            "unexpected ['x']",
        ),
        (lambda: reply(1, n=0), "'num-examples' must be positive, got 0"),
        (lambda: reply(1, n=-5), "'num-examples' must be positive, got -5"),
        (lambda: reply(1, n=2.5), "'num-examples' must be a whole number, got 2.5"),
        (lambda: reply(1, metrics=MetricRecord({"loss": 1.0})), "has no 'num-examples'"),
        (lambda: reply(1, extra={"loss2": float("nan")}), "metric 'loss2' is not finite"),
        (
            lambda: reply(1, metrics=MetricRecord({"num-examples": 3, "hist": [1.0, 2.0]})),
            "metric 'hist' is a list",
        ),
    ],
)
def test_bad_replies_are_rejected_with_a_reason(make: object, reason: str) -> None:
    assert reason in refused(make())  # type: ignore[operator]


def test_error_reply_is_rejected_with_the_clients_reason() -> None:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=4)
    err = Message(Error(code=100, reason="budget exhausted"), reply_to=ins)
    assert refused(err) == "client reported an error: budget exhausted"


def test_two_array_records_are_rejected() -> None:
    m = reply(1)
    m.content["more"] = ar(w=np.zeros((2, 3), np.float32))
    assert "exactly one ArrayRecord, got 2" in refused(m)


def test_evaluation_replies_need_no_arrays() -> None:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=2, kind="evaluate")
    m = Message(
        content=RecordDict({"metrics": MetricRecord({"num-examples": 4, "accuracy": 0.5})}),
        reply_to=ins,
    )
    assert len(screen_replies([m], expected=None).accepted) == 1


def test_accepted_replies_are_ordered_and_trimmed_to_shared_metrics() -> None:
    replies = [
        reply(9, label="b", extra={"acc": 1.0}),
        reply(3, label="c"),
        reply(5, label="a", extra={"acc": 0.5}),
    ]
    result = screen_replies(replies, expected=array_specs(GLOBAL))
    assert [r.label for r in result.accepted] == ["a", "b", "c"]
    for msg in result.messages():
        assert set(msg.content["metrics"]) == {"num-examples", "loss"}


def test_guarded_fedavg_leaves_out_the_bad_update() -> None:
    """The aggregate equals the weighted mean of the good updates, computed with numpy."""
    good = [(np.full((2, 3), 2.0, np.float32), 10), (np.full((2, 3), 5.0, np.float32), 30)]
    replies = [reply(i + 1, w=w, n=n, label=f"p{i}") for i, (w, n) in enumerate(good)]
    replies.append(reply(99, w=np.full((2, 3), np.nan, np.float32), n=1000, label="evil"))
    g = Guarded(FedAvg(min_available_nodes=1, min_train_nodes=1), seed=0)
    g.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    trained = g.train_round(1, replies)
    assert trained.arrays is not None
    expected = (2.0 * 10 + 5.0 * 30) / 40
    np.testing.assert_allclose(trained.arrays["w"].numpy(), np.full((2, 3), expected), rtol=1e-6)
    assert [r.label for r in trained.screened.rejected] == ["evil"]
    assert [r.label for r in trained.screened.accepted] == ["p0", "p1"]
    # Flower's own interface gives the same aggregate, without the screening record.
    g.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    arrays, _ = g.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_array_equal(arrays["w"].numpy(), trained.arrays["w"].numpy())


def test_guarded_with_no_good_update_aggregates_nothing() -> None:
    g = Guarded(FedAvg(min_available_nodes=1, min_train_nodes=1), seed=0)
    g.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    bad = reply(1, w=np.full((2, 3), np.nan, np.float32))
    assert g.aggregate_train(1, [bad]) == (None, None)


def test_guarded_works_with_strategies_that_consume_replies() -> None:
    # FedTrimmedAvg pops arrays out of the replies it gets; screening has already read them.
    replies = [
        reply(i, w=np.full((2, 3), float(i), np.float32), label=f"p{i}") for i in range(1, 6)
    ]
    g = Guarded(FedTrimmedAvg(beta=0.2, min_available_nodes=1, min_train_nodes=1), seed=0)
    g.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    arrays, _ = g.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 3.0))  # trims 1 and 5


def _sampled(node_ids: list[int], labels: dict[int, str], seed: int, rnd: int) -> list[str]:
    grid = FakeGrid({n: (lambda m: None) for n in node_ids})
    g = Guarded(
        FedAvg(fraction_train=0.3, min_available_nodes=1, min_train_nodes=1),
        seed=seed,
        node_order=labels.__getitem__,
    )
    msgs = g.configure_train(rnd, GLOBAL, ConfigRecord(), grid)
    return sorted(labels[m.metadata.dst_node_id] for m in msgs)


@settings(max_examples=25, deadline=None)
@given(
    ids_a=st.lists(st.integers(1, 2**62), min_size=10, max_size=10, unique=True),
    ids_b=st.lists(st.integers(1, 2**62), min_size=10, max_size=10, unique=True),
    seed=st.integers(0, 2**31),
    rnd=st.integers(1, 50),
)
def test_sampling_depends_on_labels_and_seed_not_on_node_ids(
    ids_a: list[int], ids_b: list[int], seed: int, rnd: int
) -> None:
    """Flower's node ids are random per run; the sample must not be."""
    labels_a = {n: f"partition-{i}" for i, n in enumerate(ids_a)}
    labels_b = {n: f"partition-{i}" for i, n in enumerate(ids_b)}
    assert _sampled(ids_a, labels_a, seed, rnd) == _sampled(ids_b[::-1], labels_b, seed, rnd)


def test_sampling_leaves_global_random_untouched() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    _sampled([1, 2, 3, 4], {1: "a", 2: "b", 3: "c", 4: "d"}, seed=5, rnd=1)
    assert random.random() == expected


def test_server_optimisers_keep_the_global_models_dtypes() -> None:
    from flwr.serverapp.strategy import FedAdam

    inner = FedAdam(min_available_nodes=1, min_train_nodes=1)
    g = Guarded(inner, seed=0)
    g.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    arrays, _ = g.aggregate_train(1, [reply(1, label="a"), reply(2, label="b")])
    assert arrays is not None
    assert {str(a.dtype) for a in arrays.values()} == {"float32"}
    # Flower's FedAdam on its own returns float64: the cast is what keeps clients working.
    bare = FedAdam(min_available_nodes=1, min_train_nodes=1)
    bare.configure_train(1, GLOBAL, ConfigRecord(), ONE_NODE)
    raw, _ = bare.aggregate_train(1, [reply(1, label="a"), reply(2, label="b")])
    assert raw is not None
    assert {str(a.dtype) for a in raw.values()} == {"float64"}
