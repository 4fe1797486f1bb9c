"""The server's plumbing around Flower's `SecAggPlusWorkflow` (see `federator.privacy.secagg`):
the grid it talks through and the one-round legacy strategy it calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from flwr.app import Message
from flwr.common import FitIns, FitRes, Parameters, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid

from federator.privacy.secagg_client import SECAGG_MESSAGE_TYPE
from federator.strategies.grid import ForwardingGrid


class SendReceive(Protocol):
    """Push messages and collect the replies that arrive within ``timeout`` seconds
    (`federator.server.federation.exchange.Exchange` is one: interruptible between polls)."""

    def __call__(self, messages: Iterable[Message], *, timeout: float) -> list[Message]: ...


def _gist(reason: str | None, limit: int = 300) -> str:
    """The message of a client's error without the traceback Flower wraps around it."""
    text = (reason or "unknown error").strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    text = " ".join(text.split()).rstrip("'>").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StageGrid(ForwardingGrid):
    """The grid the workflow sees: every message goes to the ``train.secagg`` action with
    ``ttl`` equal to the stage timeout, through ``exchange``; replies are recorded per node.

    Flower builds the stage messages with its default 12 h TTL: a message whose stage already
    timed out would still be delivered later and, say, re-run "setup" on that client in the
    middle of the next round. With ttl = timeout the SuperLink drops it once expired (and the
    client's expiry mod refuses it if it was already delivered).
    """

    def __init__(self, grid: Grid, exchange: SendReceive, timeout: float) -> None:
        super().__init__(grid)
        self._exchange = exchange
        self._timeout = timeout
        self.stage = ""
        self.masked: dict[int, Message] = {}  # node → its "collect masked vectors" reply
        self.dropped: dict[int, str] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        for msg in sent:
            msg.metadata.ttl = self._timeout
            msg.metadata.message_type = SECAGG_MESSAGE_TYPE
            self.stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        replies = self._exchange(sent, timeout=self._timeout)
        by_node = {r.metadata.src_node_id: r for r in replies}
        for msg in sent:
            node = msg.metadata.dst_node_id
            reply = by_node.get(node)
            if reply is None:
                self.dropped.setdefault(node, f"no reply within {self._timeout:g} s ({self.stage})")
            elif reply.has_error():
                self.dropped.setdefault(node, f"{_gist(reply.error.reason)} ({self.stage})")
            elif self.stage == Stage.COLLECT_MASKED_VECTORS:
                self.masked[node] = reply
        return replies


class OneRound(Strategy):
    """The legacy strategy the workflow calls: our sampled nodes, one FitIns, and the
    aggregate kept (the workflow hands ``aggregate_fit`` the unmasked weighted mean as
    every result's parameters, and calls it only when all four stages succeeded)."""

    def __init__(self, proxies: Sequence[ClientProxy], fitins: FitIns) -> None:
        self._proxies = list(proxies)
        self._fitins = fitins
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, self._fitins) for proxy in self._proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = list(results)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(  # type: ignore[no-untyped-def]
        self, server_round, parameters, client_manager
    ):
        return []

    def aggregate_evaluate(  # type: ignore[no-untyped-def]
        self, server_round, results, failures
    ):
        return None, {}

    def evaluate(  # type: ignore[no-untyped-def]
        self, server_round, parameters
    ):
        return None
