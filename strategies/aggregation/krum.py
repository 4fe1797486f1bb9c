"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017) and Bulyan (El Mhamdi et al. 2018, "The Hidden
Vulnerability of Distributed Learning in Byzantium", ICML 2018, arXiv:1802.07927).

Krum scores each reply by the sum of squared distances to its ``n − f − 2`` nearest other
replies and keeps the lowest-scoring one (Multi-Krum: the ``m`` lowest, then averages them).
All n² distances come from the Gram matrix ``G = U Uᵀ`` (``dᵢⱼ = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ``), summed
over blocks of coordinates: no reply is copied whole, memory is n × 8192 values of scratch
and the n × n matrix.

Numerics: the Gram form cancels badly when replies are close together compared with their
size (they usually are: updates are small next to the weights). Each block is therefore
centred on its per-coordinate mean over the replies before its products are summed — distances
do not change under a common translation, but the norms that cancel shrink to the spread of
the replies — and everything is summed in float64 (products of float32 values are exact in
float64). Flower sums uncentred in the input dtype; on inputs whose scores are not near-ties,
both select the same replies.

Selection follows Flower's `select_multikrum`: a reply's score skips the smallest entry of its
row (itself, at distance 0) and sums the next ``max(1, n − f − 2)``; the ``m`` lowest scores
win, in score order (ties: the earlier reply first).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from threadpoolctl import threadpool_limits

from federator.strategies.aggregation.updates import (
    BLOCK,
    Flat,
    Float64,
    Layer,
    Output,
    Updates,
    blocks,
    gather,
    gather_t,
    in_parallel,
    result_dtype,
)


def _gram(layers: tuple[Layer, ...], n: int) -> Float64:
    """``Σ_blocks (U_b − mean_b)(U_b − mean_b)ᵀ`` over all layers, one thread per core."""
    parts: list[Float64] = []

    def work_on(layer: Layer) -> None:
        def work(start: int, stop: int) -> None:
            g, scratch = np.zeros((n, n)), np.empty((n, BLOCK))
            for s, e in blocks(start, stop):
                block = gather(layer.views, s, e, scratch)
                block -= block.mean(axis=0)
                g += block @ block.T
            parts.append(g)

        in_parallel(layer.size, work)

    # Our threads split the coordinates; BLAS threads on top would only spin against them.
    with threadpool_limits(limits=1, user_api="blas"):
        for layer in layers:
            work_on(layer)
    return np.sum(parts, axis=0) if parts else np.zeros((n, n))


def distances(updates: Updates) -> Float64:
    """The n × n matrix of squared L2 distances between the replies' flattened models."""
    g = _gram(updates.layers, updates.count)
    sq = np.diag(g).copy()
    d = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(d, 0.0, out=d)  # rounding can leave tiny negatives
    np.fill_diagonal(d, 0.0)
    return d


def krum_scores(d: Float64, num_malicious: int) -> Float64:
    """Each reply's Krum score: its row's sorted distances after the first, summed over the
    next ``max(1, n − f − 2)`` (Flower's `select_multikrum`)."""
    closest = max(1, d.shape[0] - num_malicious - 2)
    return np.asarray(np.sort(d, axis=1)[:, 1 : closest + 1].sum(axis=1), dtype=np.float64)


def select(updates: Updates, num_malicious: int, num_to_select: int) -> list[int]:
    """Indices of the ``num_to_select`` replies with the lowest Krum scores, best first."""
    scores = krum_scores(distances(updates), num_malicious)
    return [int(i) for i in np.argsort(scores, kind="stable")[:num_to_select]]


def subset(updates: Updates, chosen: list[int]) -> Updates:
    """Only the replies ``chosen`` (in that order)."""
    layers = tuple(
        Layer(x.key, x.shape, x.dtype, tuple(x.views[i] for i in chosen)) for x in updates.layers
    )
    return Updates(layers, len(chosen))


def _flower_mean_dtype(a: Flat) -> Flat:
    return np.asarray(np.mean(a, axis=0))


def _median_dtype(a: Flat) -> Flat:
    return np.asarray(np.median(a, axis=0))


def _closest_window(rows: Flat, beta: int) -> Flat:
    """Sorted ``rows`` → the mean of each row's ``beta`` values closest to its median.

    In a sorted row those values are a window of ``beta`` consecutive ones: the window with
    the smallest sum of distances to the median (the smallest farthest distance is not
    enough: with several values at that distance it can keep more of them than needed). The
    median and the distances are computed in Flower's dtypes, so unless values on both sides
    are equally far at the window's edge, these are the values Flower's `np.argpartition`
    picks."""
    n = rows.shape[1]
    mid = (rows[:, (n - 1) // 2].astype(np.float64) + rows[:, n // 2]) * 0.5
    med = mid.astype(result_dtype(rows.dtype, _median_dtype))
    sums = np.zeros((rows.shape[0], n + 1))
    np.cumsum(np.abs(rows - med[:, None]), axis=1, dtype=np.float64, out=sums[:, 1:])
    start = np.argmin(sums[:, beta:] - sums[:, : n - beta + 1], axis=1)
    idx = start[:, None] + np.arange(beta)
    return np.asarray(np.take_along_axis(rows, idx, axis=1).sum(axis=1, dtype=np.float64) / beta)


def _bulyan_layer(layer: Layer, beta: int) -> Array:
    """Per coordinate: the mean of the ``beta`` values closest to the median (Flower's
    `aggregate_n_closest_weights`)."""
    out = Output(layer.shape, result_dtype(layer.dtype, _flower_mean_dtype))
    n = len(layer.views)

    def work(start: int, stop: int) -> None:
        scratch = np.empty((BLOCK, n), dtype=layer.dtype)
        for s, e in blocks(start, stop):
            rows = gather_t(layer.views, s, e, scratch)
            rows.sort(axis=1)
            out.flat[s:e] = _closest_window(rows, beta)

    in_parallel(layer.size, work)
    return out.array()


def bulyan(updates: Updates, num_malicious: int) -> tuple[ArrayRecord, list[int]]:
    """Bulyan: Multi-Krum keeps ``θ = n − 2f`` replies, then each coordinate averages the
    ``β = θ − 2f`` of them closest to their median. Returns the aggregate and the kept
    replies (Flower aggregates the metrics of those). Needs n ≥ 4f + 3."""
    theta = updates.count - 2 * num_malicious
    chosen = select(updates, num_malicious, theta)
    kept = subset(updates, chosen)
    beta = theta - 2 * num_malicious
    arrays = ArrayRecord({x.key: _bulyan_layer(x, beta) for x in kept.layers})
    return arrays, chosen
