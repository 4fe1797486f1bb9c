"""Privacy accounting for DP-SGD: ε of a history of subsampled Gaussian steps.

A *charge* is what one round of local DP-SGD costs: ``steps`` Poisson-subsampled Gaussian
steps with sampling rate ``q`` and noise multiplier ``σ``. A client's whole history (across
rounds and federations) composes; its ε at a given δ is what the ledger reports.

Accountants come from the `ACCOUNTANTS` registry:

* ``rdp`` — Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
  "Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530) with the
  RDP → (ε, δ) conversion of Balle et al. 2020 ("Hypothesis Testing Interpretations and Rényi
  DP", AISTATS), computed by Opacus. Only integer orders 2–256 are used: for them the RDP is an
  exact finite sum, whereas Opacus's fractional orders fail to converge for some (σ, q) and
  are then silently dropped. The bound is sound and agrees with Google's dp-accounting to
  ~1e-13 (tested).
* ``prv`` — the privacy-random-variable accountant (Gopi, Lee, Wutschitz 2021, "Numerical
  Composition of Differential Privacy", NeurIPS), via Opacus: tighter, slower, approximate
  within Opacus's ε error bound (0.01).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from federator import ConfigError
from federator.strategies.registry import Registry

RDP_ORDERS: tuple[int, ...] = tuple(range(2, 257))


class Accountant(StrEnum):
    """Accountants a plan or a node can choose."""

    RDP = "rdp"
    PRV = "prv"


@dataclass(frozen=True, kw_only=True)
class Charge:
    """``steps`` subsampled Gaussian steps at sampling rate ``sample_rate`` with noise σ."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"noise multiplier must be > 0 (got {self.noise_multiplier})")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample rate must be in (0, 1] (got {self.sample_rate})")
        if self.steps < 0:
            raise ConfigError(f"steps must be ≥ 0 (got {self.steps})")


EpsilonFn = Callable[[tuple[Charge, ...], float], float]


def _steps_per_mechanism(history: tuple[Charge, ...]) -> dict[tuple[float, float], int]:
    """Total steps per distinct (sample rate, σ), in first-seen order."""
    steps: dict[tuple[float, float], int] = {}
    for c in history:
        if c.steps > 0:
            key = (c.sample_rate, c.noise_multiplier)
            steps[key] = steps.get(key, 0) + c.steps
    return steps


@lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    """The RDP curve of one step (over `RDP_ORDERS`); steps compose by multiplying it."""
    from opacus.accountants.analysis import rdp

    curve = rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS
    )
    return tuple(float(v) for v in curve)


def _rdp_epsilon(history: tuple[Charge, ...], delta: float) -> float:
    from opacus.accountants.analysis import rdp

    # A ledger repeats the same (q, σ) every round: sum the steps per pair, then one curve
    # each (RDP composes additively, so this is exact and costs one curve per pair).
    steps = _steps_per_mechanism(history)
    if not steps:
        return 0.0
    total = [0.0] * len(RDP_ORDERS)
    for (q, sigma), n in steps.items():
        total = [a + n * b for a, b in zip(total, _rdp_per_step(q, sigma), strict=True)]
    with warnings.catch_warnings():
        # "Optimal order is the smallest alpha": true for tiny σ; the bound stays valid.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp.get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
    return float(eps)


def _prv_epsilon(history: tuple[Charge, ...], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    steps = _steps_per_mechanism(history)
    if not steps:
        return 0.0
    acc = PRVAccountant()
    acc.history = [(sigma, q, n) for (q, sigma), n in steps.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) inside Opacus's PRV grid
        return float(acc.get_epsilon(delta))


ACCOUNTANTS: Registry[EpsilonFn] = Registry("accountant")
ACCOUNTANTS.register(Accountant.RDP.value, _rdp_epsilon)
ACCOUNTANTS.register(Accountant.PRV.value, _prv_epsilon)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1) (got {delta})")


def epsilon(history: Sequence[Charge], *, delta: float, accountant: Accountant) -> float:
    """ε at ``delta`` of all charges in ``history`` composed (0 for an empty history)."""
    _check_delta(delta)
    return ACCOUNTANTS.get(accountant.value)(tuple(history), delta)


@lru_cache(maxsize=256)
def noise_multiplier(
    target_epsilon: float,
    *,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
    tolerance: float = 0.005,
) -> float:
    """The smallest σ (within ``tolerance`` in ε) such that ``steps`` steps at
    ``sample_rate`` cost at most ``target_epsilon`` at ``delta``.

    Bisection on σ with the same accountant the ledger uses, so a plan that follows this σ
    stays within its target by that accountant's own measure.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be > 0 (got {target_epsilon})")
    _check_delta(delta)
    if steps <= 0:
        raise ConfigError(f"a DP plan needs at least one step (got {steps})")

    def eps(sigma: float) -> float:
        charge = Charge(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return epsilon([charge], delta=delta, accountant=accountant)

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ConfigError(
                f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta} "
                f"over {steps} steps"
            )
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        e = eps(mid)
        if e <= target_epsilon:
            high = mid
            if target_epsilon - e < tolerance:
                break
        else:
            low = mid
    return high


__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accountant",
    "Charge",
    "epsilon",
    "noise_multiplier",
]
