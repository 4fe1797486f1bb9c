"""Federator's own aggregators: Flower's results, computed without copying every reply.

`FastAggregation` wraps a Flower strategy and replaces only the arithmetic of its training
aggregate; the arithmetic lives in rooms by concept: `mean` (FedAvg), `coordinate` (median,
trimmed mean), `krum` (Krum, Multi-Krum, Bulyan), over the zero-copy views of `updates`.
"""

from federator.strategies.aggregation.strategy import (
    Aggregated,
    Aggregator,
    Bulyan,
    FastAggregation,
    Median,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)

__all__ = [
    "Aggregated",
    "Aggregator",
    "Bulyan",
    "FastAggregation",
    "Median",
    "MultiKrum",
    "TrimmedMean",
    "WeightedMean",
]
