"""The ``[attack]`` section: which simulated clients turn Byzantine, and how.

Declared once: `AttackSection` is the config file's table (validated key by key at the I/O
edge), `attack_problems` checks it against the rest of the federation, and `resolve_attack`
freezes it into the `Attack` the plan carries — attackers chosen, every parameter filled in.

The attackers are simulation partitions (``partition-<id>``), drawn without replacement by a
generator seeded from the federation seed (or ``attack.seed``): the same config attacks with
the same clients every time, and the run's MLflow tags name them, so a result can be checked.

Simulation only: a deployment refuses a config with this section (`federator.server.plan.
for_deployment`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from federator.simulations.partition import partition_label

DEFAULT_SCALE = 10.0
DEFAULT_SIGMA = 1.0


class AttackKind(StrEnum):
    """What the attackers do (each kind's paper is in `federator.simulations.attacks.poison`)."""

    SIGN_FLIP = "sign-flip"  # send −u instead of the update u
    SCALE = "scale"  # send k·u
    GAUSSIAN = "gaussian"  # send noise N(0, σ²) per coordinate
    LITTLE_IS_ENOUGH = "little-is-enough"  # send μ − z·σ of the honest updates (Baruch 2019)
    LABEL_FLIP = "label-flip"  # train on y → C − 1 − y (data poisoning, on the node)

    @property
    def poisons_updates(self) -> bool:
        """A model-poisoning attack (applied to the attackers' replies at the coordinator);
        label flipping instead poisons the attackers' training data."""
        return self is not AttackKind.LABEL_FLIP


# Which kind each optional parameter belongs to (a parameter given for another is an error).
_PARAMETER_OWNER = {
    "scale": AttackKind.SCALE,
    "sigma": AttackKind.GAUSSIAN,
    "z": AttackKind.LITTLE_IS_ENOUGH,
}


class AttackSection(BaseModel):
    """The ``[attack]`` table: ``kind``, who attacks (``fraction`` of the clients, or
    ``count``), the kind's own parameter (``scale`` k, default 10; ``sigma``, default 1;
    ``z``, default Baruch et al.'s z_max for the round's n and f) and ``seed`` (default: the
    federation seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AttackKind
    fraction: Annotated[float, Field(gt=0, lt=0.5)] | None = None
    count: Annotated[int, Field(ge=1)] | None = None
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    sigma: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    z: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None


@dataclass(frozen=True, kw_only=True)
class Attack:
    """A resolved attack, as the plan carries it: the attackers' partition ids (sorted) and
    every parameter of the kind filled in (the others are None)."""

    kind: AttackKind
    attackers: tuple[int, ...]
    scale: float | None
    sigma: float | None
    z: float | None
    seed: int

    @property
    def labels(self) -> tuple[str, ...]:
        """The attackers' node labels (``partition-<id>``), as their replies carry them."""
        return tuple(partition_label(p) for p in self.attackers)

    def params(self) -> dict[str, float]:
        """The kind's parameters that apply (for MLflow and the display)."""
        given = {"scale": self.scale, "sigma": self.sigma, "z": self.z}
        return {k: v for k, v in given.items() if v is not None}

    def describe(self) -> str:
        """``sign-flip``, ``scale scale=10``, ``little-is-enough z=0.2533`` ..."""
        return " ".join([self.kind.value, *(f"{k}={v:.4g}" for k, v in self.params().items())])

    def summary(self) -> str:
        """The attack and its attackers, for people: ``scale scale=10 by partition-1, ...``."""
        return f"{self.describe()} by {', '.join(self.labels)}"


def attacker_count(section: AttackSection, clients: int) -> int:
    """How many of ``clients`` attack: ``count``, or ⌊fraction × clients⌋."""
    if section.count is not None:
        return section.count
    assert section.fraction is not None
    return math.floor(section.fraction * clients + 1e-9)


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019's z_max for ``n`` workers of which ``f`` attack: with
    s = ⌊n/2 + 1⌋ − f honest workers that must be won over, z_max = Φ⁻¹((n − s) / n) — the
    largest shift that keeps the attackers closer to the mean than that many honest ones."""
    s = math.floor(n / 2 + 1) - f
    quantile = (n - s) / n
    return NormalDist().inv_cdf(quantile) if 0 < quantile < 1 else math.inf


def choose_attackers(clients: int, count: int, seed: int) -> tuple[int, ...]:
    """``count`` distinct partition ids of ``range(clients)``, sorted, drawn reproducibly
    from ``seed`` (its own generator: no global random state is touched)."""
    digest = hashlib.sha256(f"federator-attackers:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    return tuple(sorted(int(p) for p in rng.choice(clients, size=count, replace=False)))


def attack_problems(section: AttackSection, *, clients: int, train_nodes: int) -> list[str]:
    """What is wrong with ``section`` in a federation of ``clients`` that samples
    ``train_nodes`` per round: each problem names its key."""
    problems = []
    if (section.fraction is None) == (section.count is None):
        problems.append("attack: give either fraction (of the clients) or count, not both")
    elif (f := attacker_count(section, clients)) < 1:
        problems.append(
            f"attack.fraction: {section.fraction:g} of {clients} clients is no attacker at all "
            "(give a larger fraction, or count)"
        )
    elif 2 * f >= clients:
        problems.append(
            f"attack.count: {f} attackers of {clients} clients is not a minority (the "
            "defences assume fewer than half)"
        )
    for key, owner in _PARAMETER_OWNER.items():
        if key in section.model_fields_set and section.kind is not owner:
            problems.append(
                f"attack.{key}: applies to kind = '{owner.value}' only, not '{section.kind.value}'"
            )
    if not problems and section.kind is AttackKind.LITTLE_IS_ENOUGH and section.z is None:
        z = alie_z(train_nodes, attacker_count(section, clients))
        if not 0 < z < math.inf:
            problems.append(
                f"attack.z: Baruch et al.'s z_max for n = {train_nodes} clients per round and "
                f"f = {attacker_count(section, clients)} attackers is {z:g}, no usable shift; "
                "give z"
            )
    return problems


def resolve_attack(
    section: AttackSection, *, clients: int, train_nodes: int, federation_seed: int
) -> Attack:
    """The frozen `Attack` of a section that passed `attack_problems`."""
    seed = federation_seed if section.seed is None else section.seed
    count = attacker_count(section, clients)
    kind = section.kind
    z = section.z
    if kind is AttackKind.LITTLE_IS_ENOUGH and z is None:
        z = alie_z(train_nodes, count)
    return Attack(
        kind=kind,
        attackers=choose_attackers(clients, count, seed),
        scale=(section.scale or DEFAULT_SCALE) if kind is AttackKind.SCALE else None,
        sigma=(section.sigma or DEFAULT_SIGMA) if kind is AttackKind.GAUSSIAN else None,
        z=z if kind is AttackKind.LITTLE_IS_ENOUGH else None,
        seed=seed,
    )


__all__ = [
    "DEFAULT_SCALE",
    "DEFAULT_SIGMA",
    "Attack",
    "AttackKind",
    "AttackSection",
    "alie_z",
    "attack_problems",
    "attacker_count",
    "choose_attackers",
    "resolve_attack",
]
