"""Send messages to nodes and collect their replies, stoppable from another thread.

Flower's ``Grid.send_and_receive`` blocks until every reply arrives or the timeout (minutes)
passes, with its own poll interval. Federator pushes and pulls itself so that a federation can
be interrupted between polls (Ctrl-C in ``federator simulate``) and the poll interval is its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Error, Message
from flwr.serverapp import Grid

from federator import FederationInterrupted, UpdateRejected
from federator.client.packing import pack_content, unpack_content
from federator.client.wire import ReplyCode
from federator.server._flwr_compat import FlowerCompat, deployed

UNREADABLE_REPLY = int(ReplyCode.UNREADABLE)  # a reply whose packed arrays could not be read
EXPIRY_MARGIN = 5.0  # seconds a message outlives its round's timeout (clock skew, transit)
# Seconds between pulls for replies. A deployed pull is an HTTP request to the SuperLink; a
# simulated one reads the Simulation Engine's in-memory state, so it can ask far more often
# and a round ends within 0.01 s of its last reply instead of up to 0.1 s later.
DEPLOYED_POLL = 0.1
SIMULATION_POLL = 0.01


class Exchange:
    """``exchange(messages, timeout=...)`` → the replies that arrived in time."""

    def __init__(
        self,
        grid: Grid,
        *,
        cancel: threading.Event | None = None,
        compat: FlowerCompat | None = None,
        poll: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._grid = grid
        # how this coordinator talks to Flower: its patches, or stock Flower
        self.compat = compat or FlowerCompat()
        self._pull = self.compat.pull(grid)
        self._packed = deployed(grid)  # one array per message on the wire (`_packing`)
        self._cancel = cancel or threading.Event()
        default_poll = DEPLOYED_POLL if self._packed else SIMULATION_POLL
        self._poll = poll if poll is not None else default_poll
        self._clock = clock
        self._sleep = sleep

    def check(self) -> None:
        """Raise `FederationInterrupted` if someone asked the federation to stop."""
        if self._cancel.is_set():
            raise FederationInterrupted("the federation was interrupted")

    def __call__(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        """Push ``messages``, collect replies for ``timeout`` seconds. Each message expires
        shortly after that: a node that picks it up later, or replies later, is discarded by
        the SuperLink instead of answering a round that has moved on."""
        outgoing = list(messages)
        for msg in outgoing:
            msg.metadata.ttl = min(msg.metadata.ttl, timeout + EXPIRY_MARGIN)
        if self._packed:
            packed: dict[int, ArrayRecord] = {}  # the same record to every node: packed once
            for msg in outgoing:
                pack_content(msg, packed=packed)
        pending = set(self._grid.push_messages(outgoing))
        sent = {msg.metadata.message_id: msg for msg in outgoing}  # ids are set by the push
        replies: list[Message] = []
        deadline = self._clock() + timeout
        while pending:
            self.check()
            arrived = self._pull(pending)
            replies += [self._unpacked(r, sent) for r in arrived]
            pending -= {m.metadata.reply_to_message_id for m in arrived}
            if not pending or self._clock() >= deadline:
                break
            self._sleep(self._poll)
        return replies

    def _unpacked(self, reply: Message, sent: dict[str, Message]) -> Message:
        """``reply`` with its arrays unpacked; an error reply naming the problem if they
        cannot be (screening then rejects it like any failed reply, and the round goes on)."""
        if not self._packed or reply.has_error():
            return reply
        try:
            unpack_content(reply)
        except UpdateRejected as err:
            instruction = sent.get(reply.metadata.reply_to_message_id)
            if instruction is None:
                raise
            return Message(Error(code=UNREADABLE_REPLY, reason=str(err)), reply_to=instruction)
        return reply
