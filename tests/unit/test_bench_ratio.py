"""The hooks-overhead benchmark's ratio and its bootstrap interval (numeric invariants)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federator.simulations.bench._common import ratio_interval

runs = st.lists(st.lists(st.floats(0.5, 3.0), min_size=2, max_size=12), min_size=2, max_size=5)


@settings(max_examples=40, deadline=None)
@given(base=runs, ours=runs)
def test_the_interval_is_ordered_and_bounded(
    base: list[list[float]], ours: list[list[float]]
) -> None:
    point, lo, hi = ratio_interval(base, ours, rng=np.random.default_rng(1), samples=300)
    assert lo <= hi
    flat_base = [t for r in base for t in r]
    flat_ours = [t for r in ours for t in r]
    # Any resample's ratio of means lies between the extreme ratios of single times.
    assert min(flat_ours) / max(flat_base) - 1e-9 <= lo
    assert hi <= max(flat_ours) / min(flat_base) + 1e-9
    pooled = np.mean([t for r in ours for t in r]) / np.mean([t for r in base for t in r])
    assert point == pytest.approx(pooled)


@settings(max_examples=30, deadline=None)
@given(base=runs, scale=st.floats(0.5, 2.0))
def test_scaling_our_times_scales_the_ratio(base: list[list[float]], scale: float) -> None:
    ours = [[t * scale for t in r] for r in base]
    point, _, _ = ratio_interval(base, ours, rng=np.random.default_rng(2), samples=200)
    assert point == pytest.approx(scale)


def test_noisy_runs_give_a_wide_interval_and_steady_ones_a_narrow_one() -> None:
    """Three runs whose medians differ by ±10 % cannot tell 1.02 from 1.07; thirty steady
    ones can."""
    rng = np.random.default_rng(3)
    noisy_base = [list(1.0 + 0.1 * s + rng.normal(0, 0.01, 19)) for s in (-1, 0, 1)]
    noisy_ours = [list(1.04 * (1.0 + 0.1 * s) + rng.normal(0, 0.01, 19)) for s in (1, 0, -1)]
    _, lo, hi = ratio_interval(noisy_base, noisy_ours, rng=np.random.default_rng(4))
    assert lo < 1.0 < 1.07 < hi or hi - lo > 0.1
    steady_base = [list(1.0 + rng.normal(0, 0.01, 19)) for _ in range(30)]
    steady_ours = [list(1.04 + rng.normal(0, 0.01, 19)) for _ in range(30)]
    point, lo, hi = ratio_interval(steady_base, steady_ours, rng=np.random.default_rng(5))
    assert 1.02 < lo < point < hi < 1.06


def test_a_run_without_rounds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        ratio_interval([[1.0], []], [[1.0]], rng=np.random.default_rng(0))
