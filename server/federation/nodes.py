"""The coordinator's view of connected nodes: who they are and how to name them safely.

Flower identifies nodes by random 64-bit ids that change every run. Federator asks each new
node once (a ``query`` message) for its label — its configured name, or its simulation
partition — and uses that label for a stable node order (reproducible sampling) and for a
pseudonym (an HMAC of the label) that is the only node identity written to MLflow.

In a deployment submitted with its kit the label is not the node's say-so: the hello carries
a fresh challenge the node signs with its node key, and only a node that proves the name it
claims takes part (`federator.server.federation.identity`). A node that proves no name,
another partner's name, or a name another connected node already holds is refused for the
run: it is never sampled, sent a release or counted towards a round's minimum, and the
refusal is reported (`take_refused`). Without node keys (simulation) labels are trusted, but
a second node claiming a connected node's name is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from federator import FederationFailed, FederationInterrupted
from federator.client.identity import NONCE_BYTES
from federator.client.wire import (
    CHALLENGE_KEY,
    HELLO_KEY,
    INSTALLED_KEY,
    LABEL_KEY,
    META_KEY,
    PROOF_KEY,
    VERSION_KEY,
)
from federator.server.federation.events import NodeEntry
from federator.server.federation.exchange import Exchange
from federator.server.federation.identity import NodeKeys, Refusal, Verdict
from federator.strategies.grid import ForwardingGrid

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Nonces = Callable[[int], bytes]


class NodeDirectory:
    """Node id → `NodeEntry`, filled by asking each new node to introduce itself (and, with
    ``keys``, to prove who it is)."""

    def __init__(
        self,
        grid: Grid,
        *,
        salt: str,
        keys: NodeKeys | None = None,
        exchange: Exchange | None = None,
        hello_timeout: float = 120.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        nonces: Nonces = secrets.token_bytes,
    ) -> None:
        self._grid = grid
        self._exchange = exchange or Exchange(grid, clock=clock, sleep=sleep)
        self._salt = salt.encode()
        self._keys = keys
        self._hello_timeout = hello_timeout
        self._clock = clock
        self._sleep = sleep
        self._nonces = nonces
        self._entries: dict[int, NodeEntry] = {}
        self._unreported: list[NodeEntry] = []

    @property
    def verifies(self) -> bool:
        """Whether nodes must prove their names (a deployment submitted with its kit)."""
        return self._keys is not None

    @property
    def grid(self) -> Grid:
        """The grid as strategies, SecAgg+ and releases must see it: only admitted nodes."""
        return _AdmittedGrid(self._grid, self)

    def pseudonym(self, label: str) -> str:
        """A short keyed hash of ``label``: stable within a federation, not reversible."""
        return hmac.new(self._salt, label.encode(), hashlib.sha256).hexdigest()[:10]

    def admitted(self) -> list[int]:
        """Connected nodes that introduced themselves and were not refused."""
        return [
            n
            for n in self._grid.get_node_ids()
            if n in self._entries and self._entries[n].refused is None
        ]

    def admitted_entries(self) -> list[NodeEntry]:
        """The entries of `admitted` nodes."""
        return [self._entries[n] for n in self.admitted()]

    def wait_for(
        self, needed: int, *, timeout: float, on_wait: Callable[[int, int], None] | None = None
    ) -> None:
        """Block until ``needed`` admitted nodes are connected (new ones are introduced on
        the way); `FederationFailed` after ``timeout``."""
        deadline = self._clock() + timeout
        last = -1
        while True:
            self.refresh()
            if (admitted := len(self.admitted())) >= needed:
                return
            if admitted != last and on_wait is not None:
                on_wait(admitted, needed)
            last = admitted
            self._exchange.check()
            if self._clock() >= deadline:
                refused = sum(1 for e in self._entries.values() if e.refused is not None)
                raise FederationFailed(
                    f"only {admitted} of the {needed} nodes needed connected within "
                    f"{timeout:.0f} s" + (f" ({refused} refused; see above)" if refused else "")
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
        """Introduce nodes not seen before; returns the new entries (refused ones too)."""
        unknown = [n for n in self._grid.get_node_ids() if n not in self._entries]
        if not unknown:
            return []
        nonces = {n: self._nonces(NONCE_BYTES) for n in unknown}
        hello = [
            Message(
                content=RecordDict(
                    {"config": ConfigRecord({HELLO_KEY: 1, CHALLENGE_KEY: nonces[n]})}
                ),
                dst_node_id=n,
                message_type=MessageType.QUERY,
            )
            for n in unknown
        ]
        replies = {
            r.metadata.src_node_id: r for r in self._exchange(hello, timeout=self._hello_timeout)
        }
        new = [self._introduce(n, replies.get(n), nonces[n]) for n in unknown]
        return new

    def take_refused(self) -> list[NodeEntry]:
        """Nodes refused since the last call (each reported once)."""
        taken, self._unreported = self._unreported, []
        return taken

    def entry(self, node_id: int) -> NodeEntry:
        """The entry for ``node_id`` (a placeholder if it never introduced itself)."""
        if node_id not in self._entries:
            return self._placeholder(node_id)
        return self._entries[node_id]

    def installed(self, node_id: int) -> int:
        """The model version the node reported as installed when it introduced itself."""
        return self.entry(node_id).installed

    def order_key(self, node_id: int) -> str:
        """Stable sort key for sampling: the node's label."""
        return self.entry(node_id).label

    def _placeholder(self, node_id: int, *, refused: str | None = None) -> NodeEntry:
        label = f"node-{node_id}"
        return NodeEntry(
            node_id=node_id,
            label=label,
            pseudonym=self.pseudonym(label),
            version="unknown",
            refused=refused,
        )

    def _introduce(self, node_id: int, reply: Message | None, nonce: bytes) -> NodeEntry:
        """The entry for ``node_id`` from its hello ``reply``, judged and recorded."""
        entry = self._judge(node_id, reply, nonce)
        self._entries[node_id] = entry
        if entry.refused is not None:
            self._unreported.append(entry)
        return entry

    def _judge(self, node_id: int, reply: Message | None, nonce: bytes) -> NodeEntry:
        meta = (
            reply.content.config_records.get(META_KEY)
            if reply is not None and reply.has_content()
            else None
        )
        if meta is None:
            if self._keys is None:  # trusted labels: as before, a nameless node takes part
                return self._placeholder(node_id)
            why = _silence(reply, self._hello_timeout)
            log(logging.WARNING, "node %d refused: %s", node_id, why)
            return self._placeholder(node_id, refused=why)
        claimed = str(meta.get(LABEL_KEY, f"node-{node_id}"))
        verdict = (
            Verdict(claimed, claimed)
            if self._keys is None
            else self._keys.admit(
                node_id=node_id, nonce=nonce, claimed=claimed, proof=meta.get(PROOF_KEY)
            )
        )
        if verdict.label is not None and self._held(verdict.label, node_id):
            verdict = Verdict(claimed, verdict.label, Refusal.TAKEN)
        if verdict.label is None:
            log(logging.WARNING, "node %d refused: %s", node_id, verdict.reason())
            return self._placeholder(node_id, refused=verdict.reason(self.pseudonym))
        raw = meta.get(INSTALLED_KEY, 0)
        return NodeEntry(
            node_id=node_id,
            label=verdict.label,
            pseudonym=self.pseudonym(verdict.label),
            version=str(meta.get(VERSION_KEY, "unknown")),
            installed=raw if isinstance(raw, int) else 0,
        )

    def _held(self, label: str, node_id: int) -> bool:
        """Whether another connected, admitted node already holds ``label``."""
        return any(
            e.label == label and e.node_id != node_id
            for e in (self._entries[n] for n in self.admitted())
        )


def _silence(reply: Message | None, timeout: float) -> str:
    """Why a node's hello reply carries no introduction."""
    if reply is None:
        return f"did not answer the hello within {timeout:.0f} s"
    if reply.has_error():
        return f"answered the hello with an error: {reply.error.reason}"
    return "answered the hello without introducing itself"


class _AdmittedGrid(ForwardingGrid):
    """A view of a grid that lists only the directory's admitted nodes."""

    def __init__(self, grid: Grid, directory: NodeDirectory) -> None:
        super().__init__(grid)
        self._directory = directory

    def get_node_ids(self) -> Iterable[int]:
        return self._directory.admitted()
