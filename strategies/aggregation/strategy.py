"""`FastAggregation`: a Flower strategy whose training aggregate Federator computes itself.

Like Flower's differential-privacy wrappers it *is* a `Strategy` and wraps one (a FedAvg-
family strategy): sampling, configuration, evaluation and the summary stay Flower's, and so do
reply validation (`validate_message_reply_consistency`), the weighting key
(``inner.weighted_by_key``, read at every round) and the metrics (``inner.train_metrics_aggr_fn``
over the replies Flower would use). Only the arithmetic on the arrays is replaced, by an
`Aggregator` from this package — the same result as Flower's within 1e-6 (see
``tests/unit/test_aggregation.py``), without copying every reply.

Differences from Flower, all on inputs Flower mishandles: arrays that differ in shape or dtype
between replies, a weight that is negative or sums to zero, or too few replies for Bulyan raise
`AggregationFailed` (the round is skipped with that reason) where Flower broadcasts, divides by
zero or returns nothing; and the replies are left intact (Flower's median and trimmed mean
empty them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from federator import AggregationFailed
from federator.strategies.aggregation import coordinate, krum
from federator.strategies.aggregation.mean import weighted_mean
from federator.strategies.aggregation.updates import decode, weights_of
from federator.strategies.forwarding import ForwardingStrategy


@dataclass(frozen=True)
class Aggregated:
    """An aggregate and the replies it was made from (whose metrics are aggregated)."""

    arrays: ArrayRecord
    used: Sequence[RecordDict]


class Aggregator(Protocol):
    """Aggregates the replies' arrays; ``weighted_by_key`` names the weight metric."""

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated: ...


@dataclass(frozen=True)
class WeightedMean:
    """FedAvg's weighted mean (McMahan et al. 2017), streaming."""

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated:
        updates = decode(contents)
        return Aggregated(weighted_mean(updates, weights_of(contents, weighted_by_key)), contents)


@dataclass(frozen=True)
class Median:
    """Coordinate-wise median (Yin et al. 2018)."""

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated:
        return Aggregated(coordinate.median(decode(contents)), contents)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean cutting a fraction ``beta`` at each end (Yin et al. 2018)."""

    beta: float

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated:
        return Aggregated(coordinate.trimmed_mean(decode(contents), self.beta), contents)


@dataclass(frozen=True)
class MultiKrum:
    """Multi-Krum (Blanchard et al. 2017): the weighted mean of the ``num_to_select`` replies
    with the lowest Krum scores; Krum is ``num_to_select=1``."""

    num_malicious: int
    num_to_select: int

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated:
        updates = decode(contents)
        chosen = krum.select(updates, self.num_malicious, self.num_to_select)
        used = [contents[i] for i in chosen]
        arrays = weighted_mean(krum.subset(updates, chosen), weights_of(used, weighted_by_key))
        return Aggregated(arrays, used)


@dataclass(frozen=True)
class Bulyan:
    """Bulyan (El Mhamdi et al. 2018) over Multi-Krum; needs n ≥ 4f + 3 replies."""

    num_malicious: int

    def __call__(self, contents: Sequence[RecordDict], weighted_by_key: str) -> Aggregated:
        need = 4 * self.num_malicious + 3
        if len(contents) < need:
            raise AggregationFailed(
                f"Bulyan with f={self.num_malicious} needs at least 4f+3={need} replies, "
                f"got {len(contents)}"
            )
        arrays, chosen = krum.bulyan(decode(contents), self.num_malicious)
        return Aggregated(arrays, [contents[i] for i in chosen])


class FastAggregation(ForwardingStrategy):
    """``inner`` (a FedAvg-family Flower strategy) with ``aggregator`` doing its arrays."""

    def __init__(self, inner: FedAvg, aggregator: Aggregator) -> None:
        if not isinstance(inner, FedAvg):
            raise TypeError(f"FastAggregation wraps a FedAvg-family strategy, not {inner!r}")
        super().__init__(inner)
        self.inner: FedAvg = inner
        self.aggregator = aggregator

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [msg.content for msg in replies if not msg.has_error()]
        if not contents:
            return None, None
        key = self.inner.weighted_by_key
        validate_message_reply_consistency(
            replies=contents, weighted_by_key=key, check_arrayrecord=True
        )
        result = self.aggregator(contents, key)
        return result.arrays, self.inner.train_metrics_aggr_fn(list(result.used), key)
