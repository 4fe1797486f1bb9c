"""Drift scores against independent computations: scipy per feature, PSI and JS by formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from federator import DataError
from federator.client.serving.drift import (
    ALPHA,
    BINS,
    Reference,
    build_reference,
    psi,
    score_window,
)


def _data(n: int, features: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, features)) + shift).astype(np.float32)


@pytest.fixture
def ref() -> Reference:
    x = _data(3000, 6, 0)
    y = np.random.default_rng(1).integers(0, 3, size=3000)
    return build_reference(x, y, classes=3, rng=np.random.default_rng(2))


def test_the_reference_samples_rows_and_bins_them_in_deciles(ref: Reference) -> None:
    assert ref.sample.shape == (2000, 6)
    assert ref.edges.shape == (6, BINS + 1)
    np.testing.assert_allclose(ref.shares.sum(axis=1), 1.0)
    np.testing.assert_allclose(ref.shares, 0.1, atol=0.002)  # deciles of its own sample
    assert ref.labels.sum() == pytest.approx(1.0)


def test_ks_and_psi_match_an_independent_computation(ref: Reference) -> None:
    window = _data(400, 6, 5, shift=0.3)
    predicted = np.random.default_rng(6).integers(0, 3, size=400)
    scores = score_window(ref, window, predicted)
    per_feature = [ks_2samp(ref.sample[:, j], window[:, j], method="asymp") for j in range(6)]
    assert scores.ks_max == pytest.approx(max(r.statistic for r in per_feature))
    assert scores.drifted_features == pytest.approx(
        np.mean([r.pvalue < ALPHA / 6 for r in per_feature])
    )
    # PSI by its textbook formula, with the window binned by the reference's decile edges.
    values = []
    for j in range(6):
        inner = ref.edges[j, 1:-1]
        live = np.histogram(
            np.clip(window[:, j], ref.edges[j, 0], ref.edges[j, -1]),
            bins=[-np.inf, *inner, np.inf],
        )[0] / len(window)
        p, q = ref.shares[j] + 1e-4, live + 1e-4
        p, q = p / p.sum(), q / q.sum()
        values.append(float(np.sum((q - p) * np.log(q / p))))
    assert scores.psi_max == pytest.approx(max(values), rel=1e-9)
    assert scores.psi_mean == pytest.approx(np.mean(values), rel=1e-9)
    counts = np.bincount(predicted, minlength=3) / 400
    m = (ref.labels + counts) / 2
    js = np.sqrt(
        0.5 * np.sum(ref.labels * np.log2(ref.labels / m))
        + 0.5 * np.sum(counts * np.log2(counts / m))
    )
    assert scores.prediction_js == pytest.approx(js, rel=1e-9)


def test_a_shifted_window_drifts_and_a_fresh_sample_does_not(ref: Reference) -> None:
    labels = np.random.default_rng(3).integers(0, 3, size=500)
    same = score_window(ref, _data(500, 6, 9), labels)
    moved = score_window(ref, _data(500, 6, 9, shift=1.0), np.zeros(500, dtype=np.int64))
    assert same.drifted_features == 0.0
    assert same.psi_max < 0.1  # "no significant change" by the usual PSI rule of thumb
    assert moved.drifted_features == 1.0
    assert moved.psi_max > 0.25  # "significant change"
    assert moved.prediction_js > 0.5 > same.prediction_js


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(0, 1, allow_nan=False), min_size=BINS, max_size=BINS),
        min_size=1,
        max_size=4,
    )
)
def test_psi_is_symmetric_non_negative_and_zero_on_itself(rows: list[list[float]]) -> None:
    a = np.asarray(rows) + 0.01
    a = a / a.sum(axis=1, keepdims=True)
    b = np.roll(a, 1, axis=1)
    assert np.all(psi(a, b) >= 0)
    np.testing.assert_allclose(psi(a, b), psi(b, a), rtol=1e-12)
    np.testing.assert_allclose(psi(a, a), 0.0, atol=1e-12)


def test_references_round_trip_without_pickle(ref: Reference, tmp_path: Path) -> None:
    path = tmp_path / "serving" / "reference.npz"
    ref.save(path)
    again = Reference.load(path)
    np.testing.assert_array_equal(again.sample, ref.sample)
    np.testing.assert_array_equal(again.labels, ref.labels)
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    (tmp_path / "evil.npy").rename(tmp_path / "evil.npz")
    with pytest.raises(DataError, match="not a drift reference"):
        Reference.load(tmp_path / "evil.npz")
    with pytest.raises(DataError, match="does not fit"):
        score_window(ref, _data(10, 5, 0), np.zeros(10, dtype=np.int64))
