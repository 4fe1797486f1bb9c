"""`Guarded`: a wrapper that puts screening and reproducible sampling around any strategy.

Like Flower's differential-privacy wrappers, it *is* a `Strategy` and delegates to the one it
wraps, so it composes with every Flower strategy (and with ``Strategy.start``) without
subclassing any of them. What it adds:

* replies are screened (`federator.strategies.screening`) before the inner strategy sees
  them: a bad update is rejected with a reason and the round goes on;
* node sampling is reproducible: Flower samples with the global ``random`` module over node
  ids that are random per run, so the wrapper hands the inner strategy a grid that lists nodes
  in a stable order and seeds ``random`` from (seed, round) around the call.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federator.strategies.grid import ForwardingGrid
from federator.strategies.screening import ArraySpec, Screened, array_specs, screen_replies
from federator.strategies.update_rules import UpdateRules, screen_updates

NodeOrder = Callable[[int], str]


@dataclass(frozen=True)
class Trained:
    """A train phase's result: the aggregate (``None``: no update was acceptable), the
    clients' aggregated metrics, and what screening decided about each reply."""

    arrays: ArrayRecord | None
    metrics: MetricRecord | None
    screened: Screened


@dataclass(frozen=True)
class Evaluated:
    """An evaluate phase's result: the aggregated metrics and what screening decided."""

    metrics: MetricRecord | None
    screened: Screened


class _OrderedGrid(ForwardingGrid):
    """A view of a grid whose ``get_node_ids`` lists nodes in a stable order."""

    def __init__(self, grid: Grid, order: NodeOrder) -> None:
        super().__init__(grid)
        self._order = order

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda n: (self._order(n), n))


@contextmanager
def _seeded_random(seed: int, server_round: int, phase: str) -> Iterator[None]:
    """Seed the global ``random`` (which Flower samples with) and restore it afterwards."""
    saved = random.getstate()
    digest = sha256(f"{seed}:{server_round}:{phase}".encode()).digest()
    random.seed(int.from_bytes(digest[:8], "big"))
    try:
        yield
    finally:
        random.setstate(saved)


def _cast_like(arrays: ArrayRecord, specs: dict[str, ArraySpec]) -> ArrayRecord:
    """Give aggregated arrays the global model's dtypes again.

    Server-side optimisers (FedAdam, FedYogi, ...) compute in float64; a client's float32
    model must not receive float64 weights (Federator's clients refuse them, others cast
    silently), so the global model keeps the dtypes it started with.
    """
    if all(str(arrays[k].dtype) == spec.dtype for k, spec in specs.items() if k in arrays):
        return arrays
    return ArrayRecord(
        {k: Array(v.numpy().astype(specs[k].dtype)) if k in specs else v for k, v in arrays.items()}
    )


class Guarded(Strategy):
    """Screen replies and sample reproducibly around ``inner``.

    ``node_order`` maps a node id to a stable sort key (Federator uses the label each node
    reports); by default node ids are used, which is stable within one deployment.
    `train_round` / `evaluate_round` return the screening outcome with the aggregate (the round
    loop uses them); Flower's ``aggregate_*`` methods return only what Flower expects.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        seed: int,
        node_order: NodeOrder | None = None,
        rules: UpdateRules | None = None,
    ):
        self.inner = inner
        self._seed = seed
        self._node_order: NodeOrder = node_order or str
        self._rules = rules or UpdateRules(max_norm_ratio=None)
        self._expected: dict[str, ArraySpec] | None = None
        self._global: ArrayRecord | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._expected = array_specs(arrays)
        self._global = arrays
        with _seeded_random(self._seed, server_round, "train"):
            return list(
                self.inner.configure_train(
                    server_round, arrays, config, _OrderedGrid(grid, self._node_order)
                )
            )

    def train_round(self, server_round: int, replies: Iterable[Message]) -> Trained:
        """Screen the train replies (structure, then size and direction), aggregate the
        accepted ones."""
        screened = screen_replies(replies, expected=self._expected)
        if self._global is not None:
            screened = screen_updates(screened, self._global, self._rules)
        if not screened.accepted:
            return Trained(None, None, screened)
        arrays, metrics = self.inner.aggregate_train(server_round, screened.messages())
        if arrays is not None and self._expected is not None:
            arrays = _cast_like(arrays, self._expected)
        return Trained(arrays, metrics, screened)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        trained = self.train_round(server_round, replies)
        return trained.arrays, trained.metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with _seeded_random(self._seed, server_round, "evaluate"):
            return list(
                self.inner.configure_evaluate(
                    server_round, arrays, config, _OrderedGrid(grid, self._node_order)
                )
            )

    def evaluate_round(self, server_round: int, replies: Iterable[Message]) -> Evaluated:
        """Screen the evaluate replies, aggregate the accepted ones."""
        screened = screen_replies(replies, expected=None)
        if not screened.accepted:
            return Evaluated(None, screened)
        return Evaluated(self.inner.aggregate_evaluate(server_round, screened.messages()), screened)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.evaluate_round(server_round, replies).metrics
