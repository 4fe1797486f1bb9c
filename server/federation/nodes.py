"""The coordinator's view of connected nodes: who they are and how to name them safely.

Flower identifies nodes by random 64-bit ids that change every run. Federator asks each new
node once (a ``query`` message) for its label — its configured name, or its simulation
partition — and uses that label for a stable node order (reproducible sampling) and for a
pseudonym (an HMAC of the label) that is the only node identity written to MLflow.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from federator import FederationFailed, FederationInterrupted
from federator.client.wire import INSTALLED_KEY, LABEL_KEY, META_KEY, VERSION_KEY
from federator.server.federation.events import NodeEntry
from federator.server.federation.exchange import Exchange

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class NodeDirectory:
    """Node id → `NodeEntry`, filled by asking each new node to introduce itself."""

    def __init__(
        self,
        grid: Grid,
        *,
        salt: str,
        exchange: Exchange | None = None,
        hello_timeout: float = 120.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._grid = grid
        self._exchange = exchange or Exchange(grid, clock=clock, sleep=sleep)
        self._salt = salt.encode()
        self._hello_timeout = hello_timeout
        self._clock = clock
        self._sleep = sleep
        self._entries: dict[int, NodeEntry] = {}

    def pseudonym(self, label: str) -> str:
        """A short keyed hash of ``label``: stable within a federation, not reversible."""
        return hmac.new(self._salt, label.encode(), hashlib.sha256).hexdigest()[:10]

    def wait_for(
        self, needed: int, *, timeout: float, on_wait: Callable[[int, int], None] | None = None
    ) -> None:
        """Block until ``needed`` nodes are connected; `FederationFailed` after ``timeout``."""
        deadline = self._clock() + timeout
        last = -1
        while (connected := len(list(self._grid.get_node_ids()))) < needed:
            if connected != last and on_wait is not None:
                on_wait(connected, needed)
            last = connected
            self._exchange.check()
            if self._clock() >= deadline:
                raise FederationFailed(
                    f"only {connected} of the {needed} nodes needed "
                    f"connected within {timeout:.0f} s"
                )
            self._sleep(0.2)

    def short_of(
        self, needed: int, *, timeout: float, on_wait: Callable[[int, int], None] | None = None
    ) -> str | None:
        """None once ``needed`` nodes are connected; after ``timeout`` without them, the
        reason. An interruption still raises `FederationInterrupted`."""
        try:
            self.wait_for(needed, timeout=timeout, on_wait=on_wait)
        except FederationInterrupted:
            raise
        except FederationFailed as err:
            return str(err)
        return None

    def refresh(self) -> list[NodeEntry]:
        """Introduce nodes not seen before; returns the new entries."""
        unknown = [n for n in self._grid.get_node_ids() if n not in self._entries]
        if not unknown:
            return []
        hello = [
            Message(
                content=RecordDict({"config": ConfigRecord({"hello": 1})}),
                dst_node_id=node_id,
                message_type=MessageType.QUERY,
            )
            for node_id in unknown
        ]
        replies = {
            r.metadata.src_node_id: r for r in self._exchange(hello, timeout=self._hello_timeout)
        }
        new = []
        for node_id in unknown:
            label, version, installed = f"node-{node_id}", "unknown", 0
            reply = replies.get(node_id)
            if reply is not None and reply.has_content():
                meta = reply.content.config_records.get(META_KEY)
                if meta is not None:
                    label = str(meta.get(LABEL_KEY, label))
                    version = str(meta.get(VERSION_KEY, version))
                    raw = meta.get(INSTALLED_KEY, 0)
                    installed = raw if isinstance(raw, int) else 0
            entry = NodeEntry(
                node_id=node_id,
                label=label,
                pseudonym=self.pseudonym(label),
                version=version,
                installed=installed,
            )
            self._entries[node_id] = entry
            new.append(entry)
        return new

    def entry(self, node_id: int) -> NodeEntry:
        """The entry for ``node_id`` (a placeholder if it never introduced itself)."""
        if node_id not in self._entries:
            label = f"node-{node_id}"
            return NodeEntry(
                node_id=node_id, label=label, pseudonym=self.pseudonym(label), version="unknown"
            )
        return self._entries[node_id]

    def installed(self, node_id: int) -> int:
        """The model version the node reported as installed when it introduced itself."""
        return self.entry(node_id).installed

    def order_key(self, node_id: int) -> str:
        """Stable sort key for sampling: the node's label."""
        return self.entry(node_id).label
