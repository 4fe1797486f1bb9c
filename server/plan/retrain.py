"""When the world has changed enough to retrain: the ``[retrain]`` policy and its decision.

``federator watch CONFIG`` looks, every so often, at what the federation's newest run
learnt from the nodes' model services (`federator.server.tracking.serving_view`) and at how
old the champion is, and asks `decide` whether to start a new federation warm-started from
the champion. Triggers, each off unless set:

* ``drift_nodes`` — at least this many nodes report drift: a node drifts when at least
  ``drift_features`` of its input features fail the KS test (Bonferroni-corrected, on the node);
* ``accuracy_drop`` — on at least ``accuracy_nodes`` nodes the champion's accuracy on the
  node's own validation split has fallen by more than this since the round that trained it
  (each node evaluates the version it has installed at its first evaluation of a run:
  `federator.client.serving.accuracy`);
* ``max_age_hours`` — the champion is older than this (a schedule).

``cooldown_hours`` keeps one trigger from starting federations back to back: drift measured
against the partners' training data persists until their data catches up, and a retrain
every few minutes would only burn their privacy budgets. The section is one pydantic
dataclass: the config's schema and the frozen object the decision reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass


@pydantic_dataclass(frozen=True, kw_only=True, config={"extra": "forbid"})
class RetrainPolicy:
    """The ``[retrain]`` section (every trigger off unless set)."""

    drift_nodes: Annotated[int, Field(ge=1)] | None = None
    drift_features: Annotated[float, Field(gt=0, le=1)] = 0.3
    accuracy_drop: Annotated[float, Field(gt=0, le=1)] | None = None
    accuracy_nodes: Annotated[int, Field(ge=1)] = 1
    max_age_hours: Annotated[float, Field(gt=0)] | None = None
    cooldown_hours: Annotated[float, Field(ge=0)] = 24.0
    rounds: Annotated[int, Field(ge=1, le=100_000)] | None = None  # default: the config's
    check_every_s: Annotated[float, Field(ge=1)] = 300.0

    @property
    def active(self) -> bool:
        return any(
            t is not None for t in (self.drift_nodes, self.accuracy_drop, self.max_age_hours)
        )


class TriggerKind(StrEnum):
    DRIFT = "drift"
    ACCURACY = "accuracy"
    AGE = "age"


@dataclass(frozen=True)
class Observation:
    """What watch saw: each reporting node's share of drifted features and how far the
    champion's accuracy on its data fell since it was trained (both by pseudonym), when the
    champion was registered (None: there is none), when the last retrain started."""

    drifted: Mapping[str, float]
    accuracy_drops: Mapping[str, float]
    champion_at: datetime | None
    last_retrain_at: datetime | None


@dataclass(frozen=True)
class Trigger:
    """Why a retraining federation starts now."""

    kind: TriggerKind
    reason: str


def decide(policy: RetrainPolicy, seen: Observation, *, now: datetime) -> Trigger | None:
    """The trigger that fires now, if any (drift first, then accuracy, then age); none
    during cool-down or without a champion to start from."""
    if seen.champion_at is None:
        return None
    if seen.last_retrain_at is not None and now - seen.last_retrain_at < timedelta(
        hours=policy.cooldown_hours
    ):
        return None
    if policy.drift_nodes is not None:
        drifting = sorted(p for p, share in seen.drifted.items() if share >= policy.drift_features)
        if len(drifting) >= policy.drift_nodes:
            return Trigger(
                TriggerKind.DRIFT,
                f"{len(drifting)} node(s) report drift in at least "
                f"{policy.drift_features:.0%} of their features ({', '.join(drifting)}); "
                f"the policy retrains at {policy.drift_nodes}",
            )
    if policy.accuracy_drop is not None:
        falling = sorted(p for p, d in seen.accuracy_drops.items() if d > policy.accuracy_drop)
        if len(falling) >= policy.accuracy_nodes:
            worst = max(seen.accuracy_drops[p] for p in falling)
            return Trigger(
                TriggerKind.ACCURACY,
                f"the champion's accuracy fell by more than {policy.accuracy_drop:.1%} on "
                f"{len(falling)} node(s) ({', '.join(falling)}; at most {worst:.1%}); the "
                f"policy retrains at {policy.accuracy_nodes}",
            )
    if policy.max_age_hours is not None:
        age = now - seen.champion_at
        if age > timedelta(hours=policy.max_age_hours):
            hours = age.total_seconds() / 3600
            return Trigger(
                TriggerKind.AGE,
                f"the champion is {hours:.1f} h old (the policy retrains after "
                f"{policy.max_age_hours:g} h)",
            )
    return None


__all__ = ["Observation", "RetrainPolicy", "Trigger", "TriggerKind", "decide"]
