"""Exact binomial tails, for Clopper–Pearson intervals without a statistics library.

``P[X ≤ k]`` for ``X ~ Binomial(n, p)`` is summed in log space from log-factorials, and the
Clopper–Pearson bounds are found by bisection on ``p`` (the tail is monotone in ``p``). The
result equals the Beta-quantile form (``Beta.ppf(1 − a, k + 1, n − k)`` for the upper bound);
the tests check it against SciPy.
"""

from __future__ import annotations

import math

import numpy as np

_BISECTIONS = 200  # until the bracket stops shrinking in float64


def _log_factorials(n: int) -> np.ndarray:
    logs = np.log(np.arange(1, n + 1, dtype=np.float64))
    out: np.ndarray = np.concatenate(([0.0], np.cumsum(logs)))
    return out


def _log_pmf(n: int, p: float, log_fact: np.ndarray) -> np.ndarray:
    """log P[X = i] for i = 0..n (p strictly inside (0, 1))."""
    i = np.arange(n + 1)
    log_choose = log_fact[n] - log_fact[i] - log_fact[n - i]
    out: np.ndarray = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    return out


def _cdf(k: int, n: int, p: float, log_fact: np.ndarray) -> float:
    """P[X ≤ k], exact to float rounding."""
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp = _log_pmf(n, p, log_fact)[: k + 1]
    top = float(lp.max())
    return min(1.0, math.exp(top) * float(np.exp(lp - top).sum()))


def upper_bound(k: int, n: int, *, tail: float) -> float:
    """The p with ``P[X ≤ k; n, p] = tail`` (1 when k = n): one-sided upper bound at 1 − tail."""
    if k >= n:
        return 1.0
    log_fact = _log_factorials(n)
    low, high = k / n, 1.0
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if _cdf(k, n, mid, log_fact) > tail:
            low = mid
        else:
            high = mid
    return high


def lower_bound(k: int, n: int, *, tail: float) -> float:
    """The p with ``P[X ≥ k; n, p] = tail`` (0 when k = 0): one-sided lower bound at 1 − tail."""
    if k <= 0:
        return 0.0
    # X ≥ k for success rate p is n − X ≤ n − k for failure rate 1 − p.
    return 1.0 - upper_bound(n - k, n, tail=tail)
