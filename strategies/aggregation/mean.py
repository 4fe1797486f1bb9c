"""Weighted FedAvg as a streaming sum (McMahan et al. 2017, arXiv:1602.05629).

The new model is ``Σ wᵢ xᵢ`` with ``wᵢ`` the reply's share of the total weight (examples, by
default), exactly Flower's `aggregate_arrayrecords`. Flower builds it from a deserialised copy
of every reply and a temporary per term; here the sum runs over blocks of coordinates: for
each block, every reply's slice is added into a float64 accumulator that stays in cache, and
the block is stored once into the output. Extra memory is the output (one model), its final
copy into bytes (one model, briefly) and a few blocks of scratch — flat in the number of
replies, because no reply is ever copied or stacked.

float64 accumulation is at least as accurate as Flower's float32 running sum, so the two agree
to within Flower's own rounding; the output has Flower's dtype (``x * w``'s: float32 stays
float32, integers become float64).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from federator.strategies.aggregation.updates import (
    Flat,
    Float64,
    Layer,
    Output,
    Updates,
    blocks,
    in_parallel,
    result_dtype,
)

# float64 accumulator and term, 256 KiB each: they stay in a core's L2 cache.
MEAN_BLOCK = 1 << 15


def _times_weight(a: Flat) -> Flat:
    return np.asarray(a[0] * 0.5)  # Flower: ``value.numpy() * weight`` with a Python float weight


def _mean_layer(layer: Layer, weights: Float64) -> Array:
    out = Output(layer.shape, result_dtype(layer.dtype, _times_weight))
    views, first = layer.views, float(weights[0])

    def work(start: int, stop: int) -> None:
        acc, term = np.empty(MEAN_BLOCK), np.empty(MEAN_BLOCK)
        for s, e in blocks(start, stop, MEAN_BLOCK):
            a, t = acc[: e - s], term[: e - s]
            np.multiply(views[0][s:e], first, out=a)
            for v, w in zip(views[1:], weights[1:], strict=True):
                np.multiply(v[s:e], w, out=t)
                a += t
            out.flat[s:e] = a

    in_parallel(layer.size, work)
    return out.array()


def weighted_mean(updates: Updates, weights: Float64) -> ArrayRecord:
    """``Σ wᵢ xᵢ`` per array; ``weights`` sum to 1 (see `weights_of`), one per reply."""
    if len(weights) != updates.count:
        raise ValueError(f"{len(weights)} weights for {updates.count} replies")
    result = ArrayRecord()
    for layer in updates.layers:
        result[layer.key] = _mean_layer(layer, weights)
    return result
