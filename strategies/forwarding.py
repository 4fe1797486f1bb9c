"""`ForwardingStrategy`: a Flower `Strategy` that hands every call to the strategy it wraps.

Federator's wrappers — our own aggregation (`federator.strategies.aggregation`), central DP's
uniform weights (`federator.privacy.central`), the benchmarks' round stamps — each change one
or two of a strategy's steps, as Flower's own DP wrappers do. They subclass this and override
only those, like the grid views subclass `federator.strategies.grid.ForwardingGrid`.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class ForwardingStrategy(Strategy):
    """Every `Strategy` step forwarded to ``inner``."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


__all__ = ["ForwardingStrategy"]
