"""Weighted FedAvg as a streaming sum (McMahan et al. 2017, arXiv:1602.05629).

The new model is ``Σ wᵢ xᵢ`` with ``wᵢ`` the reply's share of the total weight (examples, by
default), exactly Flower's `aggregate_arrayrecords`. Flower builds it from a deserialised copy
of every reply and a temporary per term, each a pass over main memory; here the sum runs over
blocks of coordinates: for each block, every reply's slice is added into an accumulator that
stays in cache, and the block is stored once into the output, on one thread per core. Extra
memory is the output (one model), its final copy into bytes (one model, briefly) and a few
blocks of scratch — flat in the number of replies, because no reply is ever copied or stacked.

The arithmetic is Flower's, operation for operation: the weights are normalised in Python
floats, each term is ``x * w`` in the dtype NumPy gives it (float32 stays float32, integers
become float64) and the terms are added in reply order in that dtype — so the result is
bit-identical to Flower's, only computed in cache instead of in main memory.
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

# Accumulator and term, 128 KiB each in float32: they stay in a core's L2 cache.
MEAN_BLOCK = 1 << 15


def _times_weight(a: Flat) -> Flat:
    return np.asarray(a[0] * 0.5)  # Flower: ``value.numpy() * weight`` with a Python float weight


def _mean_layer(layer: Layer, weights: Float64) -> Array:
    dtype = result_dtype(layer.dtype, _times_weight)
    out = Output(layer.shape, dtype)
    views = layer.views
    # A Python float times an array is computed in the array's dtype (NumPy 2, NEP 50).
    ws = [np.asarray(float(w)).astype(dtype)[()] for w in weights]

    def work(start: int, stop: int) -> None:
        term = np.empty(MEAN_BLOCK, dtype=dtype)
        for s, e in blocks(start, stop, MEAN_BLOCK):
            acc, t = out.flat[s:e], term[: e - s]
            np.multiply(views[0][s:e], ws[0], out=acc)
            for v, w in zip(views[1:], ws[1:], strict=True):
                np.multiply(v[s:e], w, out=t)
                acc += t

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
