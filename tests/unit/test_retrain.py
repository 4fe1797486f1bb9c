"""The [retrain] policy: which trigger fires when, and the section's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from federator import ConfigError
from federator.server.plan import build_plan
from federator.server.plan.retrain import Observation, RetrainPolicy, TriggerKind, decide

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def seen(
    drifted: dict[str, float],
    *,
    age_h: float = 1,
    retrained_h: float | None = None,
    drops: dict[str, float] | None = None,
) -> Observation:
    return Observation(
        drifted=drifted,
        accuracy_drops=drops or {},
        champion_at=NOW - timedelta(hours=age_h),
        last_retrain_at=None if retrained_h is None else NOW - timedelta(hours=retrained_h),
    )


def test_drift_on_enough_nodes_fires() -> None:
    policy = RetrainPolicy(drift_nodes=2, drift_features=0.3)
    assert decide(policy, seen({"a": 0.5, "b": 0.1}), now=NOW) is None
    trigger = decide(policy, seen({"a": 0.5, "b": 0.3, "c": 0.0}), now=NOW)
    assert trigger is not None
    assert trigger.kind is TriggerKind.DRIFT
    assert "2 node(s)" in trigger.reason
    assert "a, b" in trigger.reason


def test_an_accuracy_drop_on_enough_nodes_fires() -> None:
    policy = RetrainPolicy(accuracy_drop=0.05, accuracy_nodes=2)
    # a drop of exactly the threshold is not "more than"; a rise is no drop
    assert decide(policy, seen({}, drops={"a": 0.2, "b": 0.05, "c": -0.1}), now=NOW) is None
    trigger = decide(policy, seen({}, drops={"a": 0.2, "b": 0.06, "c": 0.0}), now=NOW)
    assert trigger is not None
    assert trigger.kind is TriggerKind.ACCURACY
    assert "2 node(s) (a, b; at most 20.0%)" in trigger.reason
    assert RetrainPolicy(accuracy_drop=0.05).active
    assert not RetrainPolicy().active


def test_drift_goes_before_accuracy_and_accuracy_before_age() -> None:
    policy = RetrainPolicy(drift_nodes=1, accuracy_drop=0.05, max_age_hours=1)
    both = seen({"a": 1.0}, drops={"a": 0.5}, age_h=5)
    assert (t := decide(policy, both, now=NOW)) is not None
    assert t.kind is TriggerKind.DRIFT
    old = seen({}, drops={"a": 0.5}, age_h=5)
    assert (t := decide(policy, old, now=NOW)) is not None
    assert t.kind is TriggerKind.ACCURACY


def test_age_fires_and_cooldown_and_no_champion_hold_it() -> None:
    policy = RetrainPolicy(max_age_hours=24, cooldown_hours=6)
    assert decide(policy, seen({}, age_h=23), now=NOW) is None
    trigger = decide(policy, seen({}, age_h=30), now=NOW)
    assert trigger is not None
    assert trigger.kind is TriggerKind.AGE
    assert "30.0 h old" in trigger.reason
    assert decide(policy, seen({}, age_h=30, retrained_h=2), now=NOW) is None
    assert decide(policy, seen({}, age_h=30, retrained_h=7), now=NOW) is not None
    no_champion = Observation(
        drifted={"a": 1.0}, accuracy_drops={"a": 0.5}, champion_at=None, last_retrain_at=None
    )
    assert decide(RetrainPolicy(drift_nodes=1), no_champion, now=NOW) is None


def test_drift_is_checked_before_age() -> None:
    policy = RetrainPolicy(drift_nodes=1, max_age_hours=1)
    trigger = decide(policy, seen({"a": 0.9}, age_h=5), now=NOW)
    assert trigger is not None
    assert trigger.kind is TriggerKind.DRIFT


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"drift_nodes": 0}, "drift_nodes"),
        ({"drift_features": 1.5}, "drift_features"),
        ({"every": 3}, "every"),
    ],
)
def test_a_bad_retrain_section_is_a_config_error(
    raw_config: dict[str, Any], section: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        build_plan({**raw_config, "retrain": section}, source="test")


def test_the_section_reaches_the_plan(raw_config: dict[str, Any]) -> None:
    plan = build_plan({**raw_config, "retrain": {"drift_nodes": 2, "rounds": 3}}, source="test")
    assert plan.retrain.drift_nodes == 2
    assert plan.retrain.rounds == 3
    assert plan.retrain.active
    assert not build_plan(raw_config, source="test").retrain.active
