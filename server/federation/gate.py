"""The validation gate: decides whether a round's global model may become ``champion``.

A candidate is promoted only if all three hold:

1. its server-side validation metric clears the threshold (accuracy ≥ t, or loss ≤ t);
2. it is not worse than the current champion by more than ``max_regression``;
3. the spread (max − min) of per-client accuracy is within ``max_client_spread``, when set —
   a model that is good on average but fails some partners is not released.

Every check contributes a reason, pass or fail, so the decision recorded on the model version
explains itself. The gate's only state is the current champion (`state_dict` round-trips it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from federator.server.plan.config import GateMetric, GateSection


class Verdict(StrEnum):
    """The gate's answer for one candidate."""

    PROMOTED = "promoted"
    REJECTED = "rejected"


# The gate's limits are the config's own `[gate]` section (frozen, validated): one declaration.
GatePolicy = GateSection


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A round's global model as the gate sees it."""

    round: int
    value: float
    client_accuracies: Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class Champion:
    """The model currently holding the ``champion`` alias."""

    round: int
    value: float


@dataclass(frozen=True)
class Decision:
    """Verdict plus one reason per check, in check order."""

    verdict: Verdict
    reasons: tuple[str, ...]

    @property
    def promoted(self) -> bool:
        return self.verdict is Verdict.PROMOTED


class Gate:
    """Applies a `GatePolicy` to candidates and remembers the champion."""

    def __init__(self, policy: GatePolicy) -> None:
        self.policy = policy
        self._champion: Champion | None = None

    @property
    def champion(self) -> Champion | None:
        return self._champion

    def _better_or_equal(self, a: float, b: float) -> bool:
        return a >= b if self.policy.metric is GateMetric.ACCURACY else a <= b

    def decide(self, candidate: Candidate) -> Decision:
        """Judge ``candidate`` against the policy and the current champion (no side effects)."""
        p, m, v = self.policy, self.policy.metric.value, candidate.value
        failures: list[str] = []
        passes: list[str] = []

        if not math.isfinite(v):
            return Decision(Verdict.REJECTED, (f"{m} is not finite ({v})",))

        op = "≥" if p.metric is GateMetric.ACCURACY else "≤"
        if self._better_or_equal(v, p.threshold):
            passes.append(f"{m} {v:.4f} {op} threshold {p.threshold:.4f}")
        else:
            failures.append(f"{m} {v:.4f} misses threshold {p.threshold:.4f} (needs {op})")

        champ = self._champion
        if champ is None:
            passes.append("no champion yet")
        else:
            slack = -p.max_regression if p.metric is GateMetric.ACCURACY else p.max_regression
            text = (
                f"{m} {v:.4f} vs champion {champ.value:.4f} (round {champ.round}), "
                f"tolerance {p.max_regression:.4f}"
            )
            if self._better_or_equal(v, champ.value + slack):
                passes.append(text + ": no regression beyond tolerance")
            else:
                failures.append(text + ": regressed")

        if p.max_client_spread is not None:
            accs = list(candidate.client_accuracies.values())
            if len(accs) < 2:
                failures.append(
                    f"client accuracy spread needs ≥ 2 client evaluations, got {len(accs)}"
                )
            else:
                spread = max(accs) - min(accs)
                text = (
                    f"client accuracy spread {spread:.4f} across {len(accs)} clients "
                    f"(limit {p.max_client_spread:.4f})"
                )
                (passes if spread <= p.max_client_spread else failures).append(text)

        if failures:
            return Decision(Verdict.REJECTED, tuple(failures + passes))
        return Decision(Verdict.PROMOTED, tuple(passes))

    def promote(self, candidate: Candidate) -> None:
        """Make ``candidate`` the champion (call after a promoting decision is recorded)."""
        self._champion = Champion(round=candidate.round, value=candidate.value)

    def state_dict(self) -> dict[str, float | int | None]:
        c = self._champion
        return {"champion_round": c.round if c else None, "champion_value": c.value if c else None}

    def load_state_dict(self, state: Mapping[str, float | int | None]) -> None:
        rnd, value = state.get("champion_round"), state.get("champion_value")
        if rnd is None or value is None:
            self._champion = None
        else:
            self._champion = Champion(round=int(rnd), value=float(value))
