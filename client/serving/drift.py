"""Drift, computed where the data is: live inputs and predictions against the training data.

When a node starts it keeps a `Reference` of the data it trains on: a random sample of rows
(at most 2,000), each feature's decile edges and bin shares, and the label histogram. The
model service compares each window of live requests against it (`score_window`):

* per feature, the two-sample Kolmogorov–Smirnov statistic (``scipy.stats.ks_2samp``) and
  the population stability index over the reference deciles, PSI = Σ (p − q) ln(p / q),
  computed as the symmetrised relative entropy with ``scipy.special.rel_entr``;
* for the predictions, the Jensen–Shannon distance (``scipy.spatial.distance.jensenshannon``,
  base 2, in [0, 1]) between the training label histogram and the predicted labels'.

Only these aggregate scores leave the node. The reference itself stays in the node's store
(``serving/reference.npz``, plain arrays, loaded without pickle). References: Massey 1951
(KS test); Yurdakul 2018, "Statistical properties of population stability index"; Lin 1991,
"Divergence measures based on the Shannon entropy" (JS); Rabanser et al. 2019, "Failing
loudly: an empirical study of methods for detecting dataset shift" (univariate KS tests with
a Bonferroni correction as a strong baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import ks_2samp

from federator import DataError

REFERENCE_ROWS = 2000
BINS = 10
_EPS = 1e-4  # share given to an empty bin, so that PSI stays finite
ALPHA = 0.01  # family-wise: a feature drifts if its KS p-value < ALPHA / features

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Reference:
    """What drift is measured against: a sample of training rows (flattened), per-feature
    bin edges and shares, and the training label shares (index = class)."""

    sample: npt.NDArray[np.float32]
    edges: Floats  # (features, BINS + 1)
    shares: Floats  # (features, BINS)
    labels: Floats  # (classes,)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, sample=self.sample, edges=self.edges, shares=self.shares, labels=self.labels)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """A saved reference; `DataError` naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                ref = cls(f["sample"], f["edges"], f["shares"], f["labels"])
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{path}: not a drift reference ({err})") from None
        if ref.sample.ndim != 2 or ref.edges.shape != (ref.sample.shape[1], BINS + 1):
            raise DataError(f"{path}: a drift reference with inconsistent arrays")
        return ref


def build_reference(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    classes: int,
    rng: np.random.Generator,
    rows: int = REFERENCE_ROWS,
) -> Reference:
    """The reference for training examples ``x`` (any shape per example) labelled ``y``."""
    if len(x) == 0:
        raise DataError("no training examples to build a drift reference from")
    flat = x.reshape(len(x), -1).astype(np.float32)
    chosen = rng.choice(len(flat), size=min(rows, len(flat)), replace=False)
    sample = flat[np.sort(chosen)]
    edges = np.quantile(sample, np.linspace(0, 1, BINS + 1), axis=0).T.astype(np.float64)
    shares = _shares(sample, edges)
    labels = np.bincount(y, minlength=classes).astype(np.float64)
    return Reference(sample, edges, shares, labels / labels.sum())


def _shares(rows: npt.NDArray[np.float32], edges: Floats) -> Floats:
    """Each feature's share of ``rows`` per reference bin (values outside the reference's
    range count in the outer bins)."""
    out = np.empty((rows.shape[1], BINS))
    for j in range(rows.shape[1]):
        index = np.clip(np.searchsorted(edges[j, 1:-1], rows[:, j], side="right"), 0, BINS - 1)
        out[j] = np.bincount(index, minlength=BINS) / len(rows)
    return out


@dataclass(frozen=True)
class DriftScores:
    """One window of live requests against the reference."""

    rows: int
    ks_max: float  # the largest per-feature KS statistic
    drifted_features: float  # share of features whose KS test rejects (Bonferroni, ALPHA)
    psi_max: float
    psi_mean: float
    prediction_js: float  # JS distance, training labels vs predicted labels


def psi(reference: Floats, live: Floats) -> Floats:
    """Per-row population stability index of bin shares (rows: features)."""
    p, q = reference + _EPS, live + _EPS
    p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
    return np.asarray((rel_entr(q, p) + rel_entr(p, q)).sum(axis=1))


def score_window(
    ref: Reference, window: npt.NDArray[np.float32], predicted: npt.NDArray[np.int64]
) -> DriftScores:
    """Drift of ``window`` (live rows, flattened like the reference) and its predictions."""
    if window.ndim != 2 or window.shape[1] != ref.sample.shape[1]:
        raise DataError(
            f"a window of shape {window.shape} does not fit the reference's "
            f"{ref.sample.shape[1]} features"
        )
    ks = ks_2samp(ref.sample, window, axis=0, method="asymp")
    statistic = np.nan_to_num(np.asarray(ks.statistic, dtype=np.float64))
    pvalue = np.nan_to_num(np.asarray(ks.pvalue, dtype=np.float64), nan=1.0)
    features = ref.sample.shape[1]
    stability = psi(ref.shares, _shares(window, ref.edges))
    counts = np.bincount(predicted, minlength=len(ref.labels)).astype(np.float64)
    trained = np.pad(ref.labels, (0, len(counts) - len(ref.labels)))  # a class never seen
    return DriftScores(
        rows=len(window),
        ks_max=float(statistic.max()),
        drifted_features=float((pvalue < ALPHA / features).mean()),
        psi_max=float(stability.max()),
        psi_mean=float(stability.mean()),
        prediction_js=float(jensenshannon(trained, counts / max(counts.sum(), 1), base=2)),
    )


__all__ = ["ALPHA", "BINS", "DriftScores", "Reference", "build_reference", "psi", "score_window"]
