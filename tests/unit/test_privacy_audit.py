"""Privacy audit: Clopper–Pearson bounds, the ε lower bound, and the audit of real DP-SGD.

Expected numbers come from independent methods: SciPy's Beta quantiles for Clopper–Pearson,
the closed form of a zero-error count, and the exact (ε, δ) curve of the Gaussian mechanism
(Dong, Roth, Su 2019, "Gaussian Differential Privacy") for synthetic scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from federator import ConfigError
from federator.privacy import (
    Accountant,
    CanaryAudit,
    Charge,
    audit,
    clopper_pearson,
    epsilon,
    epsilon_lower_bound,
    noise_multiplier,
)

DELTA = 1e-5


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run ~5× faster on one thread than with threads fighting for 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@st.composite
def _counts(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=3000))
    return draw(st.integers(min_value=0, max_value=n)), n


_confidence = st.floats(min_value=0.5, max_value=0.999)


@settings(max_examples=60, deadline=None)
@given(counts=_counts(), confidence=_confidence)
def test_clopper_pearson_matches_scipy_beta_quantiles(
    counts: tuple[int, int], confidence: float
) -> None:
    k, n = counts
    tail = (1 - confidence) / 2
    lower, upper = clopper_pearson(k, n, confidence=confidence)
    expected_lower = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    expected_upper = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    assert lower == pytest.approx(expected_lower, abs=1e-9)
    assert upper == pytest.approx(expected_upper, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(counts=_counts(), confidence=_confidence)
def test_clopper_pearson_contains_the_estimate_and_is_monotone(
    counts: tuple[int, int], confidence: float
) -> None:
    k, n = counts
    lower, upper = clopper_pearson(k, n, confidence=confidence)
    assert 0.0 <= lower <= k / n <= upper <= 1.0
    if k < n:  # one more success moves both ends up
        lower_next, upper_next = clopper_pearson(k + 1, n, confidence=confidence)
        assert lower_next > lower
        assert upper_next > upper
    # one more trial without success moves both ends down (or keeps a 0 lower end)
    lower_more, upper_more = clopper_pearson(k, n + 1, confidence=confidence)
    assert lower_more <= lower
    assert upper_more < upper
    # more confidence, a wider interval (strictly, except at the ends 0 and 1)
    wide_lower, wide_upper = clopper_pearson(k, n, confidence=(1 + confidence) / 2)
    assert wide_lower < lower or lower == 0.0
    assert wide_upper > upper or upper == 1.0


def test_clopper_pearson_refuses_impossible_counts() -> None:
    with pytest.raises(ConfigError, match="successes"):
        clopper_pearson(5, 3, confidence=0.95)


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε at δ of the Gaussian mechanism with sensitivity/σ = μ (Dong, Roth, Su 2019)."""

    def gap(eps: float) -> float:
        norm = stats.norm
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    return float(optimize.brentq(lambda e: gap(e) - delta, 0.0, 100.0))


# (μ, a floor the bound clears): exact ε is 2.0, 4.4, 10.0, 24.4; with 2000 counted trials per
# side no bound can exceed log(2000 / 3.7) ≈ 6.3, whatever the mechanism.
@pytest.mark.parametrize(("mu", "floor"), [(0.5, 0.0), (1.0, 1.0), (2.0, 2.5), (4.0, 4.5)])
def test_lower_bound_on_gaussian_scores_stays_below_the_exact_epsilon(
    mu: float, floor: float
) -> None:
    rng = np.random.default_rng(11)
    out, inn = rng.normal(0.0, 1.0, 4000), rng.normal(mu, 1.0, 4000)
    result = epsilon_lower_bound(out, inn, delta=DELTA, confidence=0.95)
    assert result.epsilon_lower <= _gaussian_epsilon(mu, DELTA)
    assert result.epsilon_lower >= floor  # ...and sees a real part of the privacy loss


def test_lower_bound_for_perfectly_separated_scores() -> None:
    # 1000 trials per side, 500 counted: no error at all. The one-sided 97.5 % upper bound on
    # a zero count is 1 − 0.025^(1/500), and ε ≥ log((1 − δ − u) / u).
    out, inn = np.zeros(1000), np.ones(1000)
    result = epsilon_lower_bound(out, inn, delta=DELTA, confidence=0.95)
    u = 1 - 0.025 ** (1 / 500)
    assert result.false_positives == 0
    assert result.false_negatives == 0
    assert result.fpr_upper == pytest.approx(u, rel=1e-9)
    assert result.epsilon_lower == pytest.approx(math.log((1 - DELTA - u) / u), rel=1e-9)


def test_lower_bound_is_zero_when_nothing_can_be_told_apart() -> None:
    rng = np.random.default_rng(5)
    result = epsilon_lower_bound(
        rng.normal(size=2000), rng.normal(size=2000), delta=DELTA, confidence=0.95
    )
    assert result.epsilon_lower == 0.0


def test_canary_audit_refuses_negative_noise() -> None:
    with pytest.raises(ConfigError, match="noise multiplier"):
        CanaryAudit(noise_multiplier=-1.0)


# The real mechanism: Federator's make_private (Opacus DPOptimizer, Poisson loader), one
# full-batch step (q = 1) on a linear model, σ chosen by our accountant for ε = 2.
CLAIMED = 2.0


def _sigma_for_claim() -> tuple[CanaryAudit, float]:
    shape = CanaryAudit(noise_multiplier=1.0)
    sigma = noise_multiplier(
        CLAIMED,
        delta=DELTA,
        sample_rate=shape.sample_rate,
        steps=shape.steps,
        accountant=Accountant.RDP,
    )
    claimed = epsilon(
        [Charge(noise_multiplier=sigma, sample_rate=shape.sample_rate, steps=shape.steps)],
        delta=DELTA,
        accountant=Accountant.RDP,
    )
    return CanaryAudit(noise_multiplier=sigma), claimed


@pytest.mark.usefixtures("one_thread")
def test_audit_of_dp_sgd_stays_below_the_claimed_epsilon() -> None:
    setup, claimed = _sigma_for_claim()
    assert claimed == pytest.approx(CLAIMED, abs=0.01)
    result = audit(setup, trials=2000, delta=DELTA, seed=1)
    assert result.epsilon_lower <= claimed
    # It does tell the datasets apart somewhat (the exact ε of this Gaussian is ≈ 1.84;
    # 2000 trials per side resolve only part of it: 0.2–0.6 across seeds).
    assert result.epsilon_lower > 0.0


@pytest.mark.usefixtures("one_thread")
def test_audit_detects_dp_sgd_without_noise() -> None:
    setup, claimed = _sigma_for_claim()
    leaky = CanaryAudit(noise_multiplier=0.0, max_grad_norm=setup.max_grad_norm)
    result = audit(leaky, trials=1000, delta=DELTA, seed=2)
    assert result.false_positives == 0
    assert result.false_negatives == 0
    assert result.epsilon_lower > claimed + 2.0


@pytest.mark.usefixtures("one_thread")
def test_audit_detects_too_little_noise_for_the_claim() -> None:
    # A bug that scaled the noise down 3.6× (σ = 0.6 where ε = 2 needs 2.15) is caught:
    # the lower bound (2.56–2.74 across seeds) exceeds the claim.
    setup, claimed = _sigma_for_claim()
    assert setup.noise_multiplier / 0.6 > 3.5
    result = audit(CanaryAudit(noise_multiplier=0.6), trials=2000, delta=DELTA, seed=3)
    assert result.epsilon_lower > claimed
