"""The validation gate's decisions."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federator.server.federation.gate import Candidate, Gate, GatePolicy, Verdict
from federator.server.plan.config import GateMetric


def gate(
    metric: GateMetric = GateMetric.ACCURACY,
    threshold: float = 0.8,
    regression: float = 0.01,
    spread: float | None = 0.2,
) -> Gate:
    return Gate(
        GatePolicy(
            metric=metric, threshold=threshold, max_regression=regression, max_client_spread=spread
        )
    )


def cand(rnd: int, value: float, *accs: float) -> Candidate:
    return Candidate(
        round=rnd, value=value, client_accuracies={f"c{i}": a for i, a in enumerate(accs)}
    )


def test_first_good_candidate_is_promoted_with_reasons() -> None:
    d = gate().decide(cand(1, 0.9, 0.85, 0.95))
    assert d.verdict is Verdict.PROMOTED
    assert d.reasons == (
        "accuracy 0.9000 ≥ threshold 0.8000",
        "no champion yet",
        "client accuracy spread 0.1000 across 2 clients (limit 0.2000)",
    )


def test_below_threshold_is_rejected() -> None:
    d = gate().decide(cand(1, 0.79, 0.8, 0.8))
    assert not d.promoted
    assert d.reasons[0] == "accuracy 0.7900 misses threshold 0.8000 (needs ≥)"


def test_regression_beyond_tolerance_is_rejected() -> None:
    g = gate()
    first = cand(1, 0.90, 0.9, 0.9)
    g.promote(first)
    assert g.decide(cand(2, 0.891, 0.9, 0.9)).promoted  # 0.009 worse: within 0.01
    d = g.decide(cand(3, 0.885, 0.9, 0.9))
    assert not d.promoted
    assert "regressed" in d.reasons[0]
    assert "champion 0.9000 (round 1)" in d.reasons[0]


def test_wide_client_spread_is_rejected() -> None:
    d = gate().decide(cand(1, 0.95, 0.99, 0.70, 0.95))
    assert not d.promoted
    assert d.reasons[0] == "client accuracy spread 0.2900 across 3 clients (limit 0.2000)"


def test_spread_needs_two_clients() -> None:
    d = gate().decide(cand(1, 0.95, 0.9))
    assert not d.promoted
    assert "needs ≥ 2 client evaluations, got 1" in d.reasons[0]


def test_spread_unchecked_when_not_configured() -> None:
    assert gate(spread=None).decide(cand(1, 0.95)).promoted


def test_loss_metric_is_lower_is_better() -> None:
    g = gate(GateMetric.LOSS, threshold=0.5, regression=0.05, spread=None)
    assert not g.decide(cand(1, 0.6)).promoted
    first = cand(1, 0.4)
    assert g.decide(first).promoted
    g.promote(first)
    assert g.decide(cand(2, 0.44)).promoted
    d = g.decide(cand(3, 0.46))
    assert not d.promoted
    assert d.reasons[0].startswith("loss 0.4600 vs champion 0.4000")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_metric_is_rejected(value: float) -> None:
    assert not gate().decide(cand(1, value, 0.9, 0.9)).promoted


def test_state_dict_round_trips_the_champion() -> None:
    g = gate()
    g.promote(cand(4, 0.93))
    h = gate()
    h.load_state_dict(g.state_dict())
    assert h.champion == g.champion
    assert h.decide(cand(5, 0.90, 0.9, 0.9)).verdict is Verdict.REJECTED
    h.load_state_dict({"champion_round": None, "champion_value": None})
    assert h.champion is None


accuracies = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(
    values=st.lists(accuracies, min_size=1, max_size=30),
    threshold=accuracies,
    tolerance=st.floats(0, 0.2),
)
def test_champion_is_never_below_threshold_and_never_drops_more_than_tolerance(
    values: list[float], threshold: float, tolerance: float
) -> None:
    g = gate(threshold=threshold, regression=tolerance, spread=None)
    history = []
    for rnd, v in enumerate(values, start=1):
        c = cand(rnd, v)
        before = g.champion
        decision = g.decide(c)
        assert g.champion == before  # deciding never changes state
        if decision.promoted:
            g.promote(c)
            assert v >= threshold
            if before is not None:
                assert v >= before.value - tolerance
            history.append(v)
    # Each promotion loses at most `tolerance` against the previous champion.
    for prev, nxt in itertools.pairwise(history):
        assert nxt >= prev - tolerance
