"""What a coordinator asks for (`LocalDpTarget`) and what a node allows (`NodePrivacyPolicy`).

The coordinator's target sets the noise: σ is chosen so that training in every planned
round stays within ``target_epsilon`` at ``delta``. The node's policy sets the limit: its
ledger's total ε per dataset, across all federations, may never exceed ``max_epsilon``. The
policy lives in the node's own configuration; nothing a coordinator sends can change it.
`authorize` checks both before a round trains and records the spend first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field

from federator import ConfigError, PolicyRefused, PrivacyBudgetExhausted
from federator.privacy.accounting import Accountant, Charge, epsilon, noise_multiplier
from federator.privacy.dpsgd import sample_rate_for
from federator.privacy.ledger import PrivacyLedger

# Slack for the bisection on σ: a plan may end this much above its target, never more.
TARGET_SLACK = 1e-3


# Local DP's constraints, declared once: the config's `[privacy.local]` and the instructions.
Epsilon = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Delta = Annotated[float, Field(gt=0, lt=1)]
ClipNorm = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True, kw_only=True)
class LocalDpTarget:
    """Local DP-SGD as a federation plans it (the same for every client) — in the plan and,
    unchanged, in every client's instructions (pydantic validates it there)."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    target_epsilon: Epsilon
    delta: Delta
    max_grad_norm: ClipNorm
    accountant: Accountant
    rounds: Annotated[int, Field(ge=1)]

    def __post_init__(self) -> None:
        if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ConfigError(f"target_epsilon must be > 0 (got {self.target_epsilon})")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1) (got {self.delta})")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max_grad_norm must be > 0 (got {self.max_grad_norm})")
        if self.rounds < 1:
            raise ConfigError(f"a DP plan needs at least one round (got {self.rounds})")

    def check_dataset_size(self, num_examples: int) -> None:
        """δ must be below 1/n, or the guarantee allows publishing a record outright."""
        if num_examples < 1:
            raise ConfigError("DP-SGD needs at least one training example")
        if self.delta >= 1 / num_examples:
            raise ConfigError(
                f"delta {self.delta:g} is not below 1/n = {1 / num_examples:.3g} for "
                f"{num_examples} training examples; choose delta < 1/n (e.g. 1e-5)"
            )

    def round_charge(self, *, num_examples: int, batch_size: int, epochs: int) -> Charge:
        """The charge of one round, with σ set so that all planned rounds meet the target."""
        self.check_dataset_size(num_examples)
        q = sample_rate_for(num_examples, batch_size)
        steps = epochs * round(1 / q)
        sigma = noise_multiplier(
            self.target_epsilon,
            delta=self.delta,
            sample_rate=q,
            steps=steps * self.rounds,
            accountant=self.accountant,
        )
        return Charge(noise_multiplier=sigma, sample_rate=q, steps=steps)


@dataclass(frozen=True, kw_only=True)
class NodePrivacyPolicy:
    """A node's own limits. ``max_epsilon`` None: no limit, but every spend is still recorded
    (when a ledger is configured) and non-private training is allowed."""

    max_epsilon: float | None
    delta: float = 1e-5
    accountant: Accountant = Accountant.RDP
    ledger: Path | None = None

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"the node's max-epsilon must be > 0 (got {self.max_epsilon})")
        if not 0 < self.delta < 1:
            raise ConfigError(f"the node's privacy delta must be in (0, 1) (got {self.delta})")


@dataclass(frozen=True, kw_only=True)
class Spend:
    """A round's spend as recorded: the ledger total before/after and this run's ε."""

    charge: Charge
    total_before: float
    total_after: float
    run_epsilon: float


def refuse_non_private(policy: NodePrivacyPolicy) -> None:
    """A node with a budget trains only with local DP."""
    if policy.max_epsilon is not None:
        raise PolicyRefused(
            f"this node's policy allows at most epsilon {policy.max_epsilon:g} and requires "
            "local DP; the coordinator asked for training without it"
        )


def authorize(
    policy: NodePrivacyPolicy,
    *,
    target: LocalDpTarget,
    charge: Charge,
    dataset: str,
    federation: str,
    run: str,
    round: int,
) -> Spend:
    """Check this round against the node's budget and the plan's target, then record it.

    Raises `PrivacyBudgetExhausted` (nothing recorded) if the ledger total would exceed the
    node's ``max_epsilon``, or this run would exceed the epsilon it planned for.
    """
    if policy.ledger is None:
        raise PolicyRefused(
            "local DP needs a privacy ledger on this node (set 'privacy-ledger' in its node "
            "config) — without one its spend across rounds cannot be enforced"
        )
    ledger = PrivacyLedger(policy.ledger)
    entries = [e for e in ledger.entries() if e.dataset == dataset]  # one read of the file
    history = [e.charge for e in entries]
    before = epsilon(history, delta=policy.delta, accountant=policy.accountant)
    after = epsilon([*history, charge], delta=policy.delta, accountant=policy.accountant)
    if policy.max_epsilon is not None and after > policy.max_epsilon:
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: this node's data has spent epsilon {before:.3f} of its "
            f"{policy.max_epsilon:g} (delta {policy.delta:g}); this round would bring it to "
            f"{after:.3f}, so the node does not train"
        )
    run_history = [*(e.charge for e in entries if e.run == run), charge]
    run_eps = epsilon(run_history, delta=target.delta, accountant=target.accountant)
    if run_eps > target.target_epsilon * (1 + TARGET_SLACK) + 1e-9:
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: this run planned epsilon {target.target_epsilon:g} "
            f"(delta {target.delta:g}); round {round} would bring it to {run_eps:.3f} "
            "(more rounds than planned?)"
        )
    ledger.record(dataset=dataset, federation=federation, run=run, round=round, charge=charge)
    return Spend(charge=charge, total_before=before, total_after=after, run_epsilon=run_eps)


__all__ = [
    "TARGET_SLACK",
    "LocalDpTarget",
    "NodePrivacyPolicy",
    "Spend",
    "authorize",
    "refuse_non_private",
]
