"""Privacy audit: an empirical lower bound on ε, to test the accountant's upper bound.

Differential privacy promises that no test can tell a dataset ``D`` from ``D' = D ∪ {canary}``
by looking at the trained model better than ``e^ε`` allows: for any test with false-positive
rate FPR and false-negative rate FNR (Kairouz, Oh, Viswanath 2015, "The Composition Theorem
for Differential Privacy"),

    ε ≥ log((1 − δ − FNR) / FPR)   and   ε ≥ log((1 − δ − FPR) / FNR).

An audit runs the real mechanism many times on both datasets, applies a distinguishing test
and turns the observed error counts into a lower bound on ε that holds with a stated
confidence: Clopper–Pearson upper bounds on FPR and FNR (each at ``1 − α/2``, so both hold at
once with probability ``1 − α`` by the union bound). This is the method of Jagielski, Ullman,
Oprea 2020 ("Auditing Differentially Private Machine Learning: How Private is Private SGD?",
NeurIPS) and Nasr et al. 2021 ("Adversary Instantiation: Lower Bounds for Differentially
Private Machine Learning", IEEE S&P). If the lower bound exceeds the ε the accountant claims,
the implementation (or the accounting) is wrong; a lower bound below it proves nothing more.

The mechanism audited here is Federator's own DP-SGD (`make_private`: Opacus's
``GradSampleModule``, ``DPOptimizer`` and Poisson ``DPDataLoader``) on a tiny linear model.
The canary's only input feature is one that no record of ``D`` uses, scaled so that its
gradient is far larger than the clip norm: clipped, it moves the weights of that feature by
exactly ``lr · C / B``, and nothing else moves them. The test statistic is the projection of
the weight change onto the canary's (negative) gradient direction; the threshold is chosen on
one half of the trials and the error rates are counted on the other half, so the choice does
not bias the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federator import ConfigError
from federator.privacy._binomial import lower_bound, upper_bound
from federator.privacy.dpsgd import DpSgd, make_private, sample_rate_for

_CANARY_SCALE = 100.0  # canary feature value: its gradient is ≈ 140 × a clip norm of 1
_MIN_CANARY_GRAD = 1e-3
_CANDIDATES = 201  # thresholds tried on the calibration half


def clopper_pearson(successes: int, trials: int, *, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial rate (Clopper, Pearson 1934).

    Each end is exact with ``(1 − confidence) / 2`` in its tail, so the upper end alone is a
    one-sided bound at ``1 − (1 − confidence) / 2``.
    """
    if trials <= 0:
        raise ConfigError(f"need at least one trial (got {trials})")
    if not 0 <= successes <= trials:
        raise ConfigError(f"successes must be in [0, {trials}] (got {successes})")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1) (got {confidence})")
    tail = (1 - confidence) / 2
    return lower_bound(successes, trials, tail=tail), upper_bound(successes, trials, tail=tail)


def _epsilon_from_rates(fpr: float, fnr: float, *, delta: float) -> float:
    """The larger of the two hypothesis-testing bounds on ε (0 if neither is positive)."""
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if a <= 0:
            return math.inf
        numerator = 1 - delta - b
        if numerator > 0:
            best = max(best, math.log(numerator / a))
    return best


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """An empirical lower bound on ε and the counts it comes from.

    ``epsilon_lower`` holds with probability ≥ ``confidence`` over the trials, for the
    threshold ``threshold`` (score above it ⇒ "the canary was in the data").
    """

    epsilon_lower: float
    confidence: float
    delta: float
    threshold: float
    false_positives: int
    negatives: int
    false_negatives: int
    positives: int
    fpr_upper: float
    fnr_upper: float

    @property
    def epsilon_point(self) -> float:
        """ε from the observed rates themselves (no confidence: for reports only)."""
        return _epsilon_from_rates(
            self.false_positives / self.negatives,
            self.false_negatives / self.positives,
            delta=self.delta,
        )


def _counts(
    scores_out: np.ndarray, scores_in: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """False positives (out-scores > τ) and false negatives (in-scores ≤ τ) for each τ."""
    out_sorted, in_sorted = np.sort(scores_out), np.sort(scores_in)
    fp = len(out_sorted) - np.searchsorted(out_sorted, thresholds, side="right")
    fn = np.searchsorted(in_sorted, thresholds, side="right")
    return fp, fn


def _choose_threshold(
    scores_out: np.ndarray, scores_in: np.ndarray, *, delta: float, confidence: float
) -> float:
    """The threshold whose Clopper–Pearson bound on ε is largest on these (calibration) scores.

    Candidates are ``_CANDIDATES`` quantiles of the pooled scores; ranking them by the same
    confidence bound the audit reports (not by the raw rates) keeps the choice away from
    extreme tails where one or two counts decide everything.
    """
    pooled = np.concatenate([scores_out, scores_in])
    candidates = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, _CANDIDATES)))
    fp, fn = _counts(scores_out, scores_in, candidates)
    best, best_eps = float(candidates[0]), -1.0
    for tau, k_fp, k_fn in zip(candidates, fp, fn, strict=True):
        fpr = clopper_pearson(int(k_fp), len(scores_out), confidence=confidence)[1]
        fnr = clopper_pearson(int(k_fn), len(scores_in), confidence=confidence)[1]
        eps = _epsilon_from_rates(fpr, fnr, delta=delta)
        if eps > best_eps:
            best, best_eps = float(tau), eps
    return best


def epsilon_lower_bound(
    scores_out: np.ndarray,
    scores_in: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
) -> AuditResult:
    """Lower bound on ε from scores of trials without (``scores_out``) and with the canary.

    The first half of each side chooses the threshold, the second half is counted. Higher
    scores must mean "canary present" (the bound also covers the flipped test).
    """
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1) (got {delta})")
    out, inn = np.asarray(scores_out, dtype=np.float64), np.asarray(scores_in, dtype=np.float64)
    if min(len(out), len(inn)) < 4:
        raise ConfigError("an audit needs at least 4 trials per side")
    half_out, half_in = len(out) // 2, len(inn) // 2
    threshold = _choose_threshold(out[:half_out], inn[:half_in], delta=delta, confidence=confidence)
    eval_out, eval_in = out[half_out:], inn[half_in:]
    fp_arr, fn_arr = _counts(eval_out, eval_in, np.array([threshold]))
    fp, fn = int(fp_arr[0]), int(fn_arr[0])
    _, fpr_upper = clopper_pearson(fp, len(eval_out), confidence=confidence)
    _, fnr_upper = clopper_pearson(fn, len(eval_in), confidence=confidence)
    return AuditResult(
        epsilon_lower=_epsilon_from_rates(fpr_upper, fnr_upper, delta=delta),
        confidence=confidence,
        delta=delta,
        threshold=threshold,
        false_positives=fp,
        negatives=len(eval_out),
        false_negatives=fn,
        positives=len(eval_in),
        fpr_upper=fpr_upper,
        fnr_upper=fnr_upper,
    )


@dataclass(frozen=True, kw_only=True)
class CanaryAudit:
    """The DP-SGD run under audit: a linear classifier on ``examples`` random records.

    ``noise_multiplier = 0`` switches the noise off (a mechanism with no privacy at all),
    which the audit must catch; `DpSgd` itself refuses σ = 0, so the audit wraps with σ = 1
    and then sets the optimizer's σ.
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    examples: int = 64
    features: int = 8
    batch_size: int | None = None  # None: the whole dataset (sampling rate q = 1)
    epochs: int = 1
    lr: float = 1.0

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"noise multiplier must be ≥ 0 (got {self.noise_multiplier})")
        if self.examples < 1 or self.features < 2 or self.epochs < 1:
            raise ConfigError("an audit needs ≥ 1 example, ≥ 2 features and ≥ 1 epoch")

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate of the run with the canary (what the accountant is given)."""
        return sample_rate_for(self.examples + 1, self.effective_batch_size)

    @property
    def steps(self) -> int:
        """Noisy steps per run with the canary."""
        return self.epochs * round(1 / self.sample_rate)

    @property
    def effective_batch_size(self) -> int:
        """Batch size of the loader (the whole dataset with the canary when unset)."""
        return self.batch_size if self.batch_size is not None else self.examples + 1


def _canary(model: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The canary record: only the last feature, labelled with the class ``model`` finds
    least likely, so that its gradient is large (≈ √2 · 100) rather than saturated to 0."""
    x = torch.zeros(1, model.in_features)
    x[0, -1] = _CANARY_SCALE
    with torch.no_grad():
        y = model(x).argmin(dim=1)
    return x, y


def _data(
    setup: CanaryAudit, seed: int, canary: tuple[torch.Tensor, torch.Tensor] | None
) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(setup.examples, setup.features, generator=g)
    x[:, -1] = 0.0  # the canary's feature: unused by every record of D
    y = torch.randint(0, 2, (setup.examples,), generator=g)
    if canary is not None:
        x, y = torch.cat([x, canary[0]]), torch.cat([y, canary[1]])
    return TensorDataset(x, y)


def _canary_direction(model: nn.Linear, canary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Unit vector along the negative gradient of the canary's loss at ``model``."""
    loss = nn.functional.cross_entropy(model(canary[0]), canary[1])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grad = torch.cat([g.flatten() for g in grads])
    if not grad.norm() > _MIN_CANARY_GRAD:
        raise ConfigError(f"the canary's gradient vanished ({float(grad.norm()):.3g})")
    direction: torch.Tensor = -grad / grad.norm()
    return direction


def canary_scores(setup: CanaryAudit, *, with_canary: bool, trials: int, seed: int) -> np.ndarray:
    """Scores of ``trials`` independent DP-SGD runs on ``D`` (or ``D'`` with the canary).

    Every run starts from the same initial weights on the same records (both drawn from
    ``seed``); only DP-SGD's own randomness — Poisson sampling and noise, seeded from
    ``seed`` and the side — differs between runs. Score: the weight change projected on the
    canary's direction.
    """
    if trials < 1:
        raise ConfigError(f"need at least one trial (got {trials})")
    model = nn.Linear(setup.features, 2, bias=False)
    bound = 1 / math.sqrt(setup.features)  # PyTorch's default init range, from our own RNG
    with torch.no_grad():
        nn.init.uniform_(model.weight, -bound, bound, generator=torch.Generator().manual_seed(seed))
    initial = [p.detach().clone() for p in model.parameters()]
    canary = _canary(model)
    direction = _canary_direction(model, canary)
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        _data(setup, seed, canary if with_canary else None), batch_size=setup.effective_batch_size
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.lr)
    dp = DpSgd(
        noise_multiplier=setup.noise_multiplier or 1.0,
        max_grad_norm=setup.max_grad_norm,
        noise_seed=2 * seed + int(with_canary),
    )
    scores = np.empty(trials)
    loss_fn = nn.CrossEntropyLoss()
    with make_private(model, optimizer=optimizer, loader=loader, dp=dp) as parts:
        parts.optimizer.noise_multiplier = setup.noise_multiplier  # type: ignore[attr-defined]
        params = list(model.parameters())
        for t in range(trials):
            with torch.no_grad():
                for p, p0 in zip(params, initial, strict=True):
                    p.copy_(p0)
            for _ in range(setup.epochs):
                for xb, yb in parts.loader:
                    parts.optimizer.zero_grad()
                    loss_fn(parts.model(xb), yb).backward()
                    parts.optimizer.step()
            with torch.no_grad():
                change = torch.cat(
                    [(p - p0).flatten() for p, p0 in zip(params, initial, strict=True)]
                )
                scores[t] = float(change @ direction)
    return scores


def audit(
    setup: CanaryAudit,
    *,
    trials: int,
    delta: float,
    seed: int,
    confidence: float = 0.95,
) -> AuditResult:
    """Empirical lower bound on the ε of ``setup`` from ``trials`` runs per side."""
    out = canary_scores(setup, with_canary=False, trials=trials, seed=seed)
    inn = canary_scores(setup, with_canary=True, trials=trials, seed=seed)
    return epsilon_lower_bound(out, inn, delta=delta, confidence=confidence)


__all__ = [
    "AuditResult",
    "CanaryAudit",
    "audit",
    "canary_scores",
    "clopper_pearson",
    "epsilon_lower_bound",
]
