"""Handing simulated messages to Flower's Simulation Engine workers without a 0.1 s wait.

Flower 1.42's Simulation Engine moves messages from its in-memory LinkState to its workers in
one thread, ``vce_api.add_messages_to_queue``: one pass over the nodes, then
``f_stop.wait(0.1)``. Every phase of a simulated round (train, evaluate) therefore waits for
the next pass — up to 0.1 s, twice a round — and the rounds of a simulation snap to steps of
about 0.1 s: a round whose work takes 0.72 s lasts 0.8 s, one of 0.81 s lasts 0.9 s.

`quick_dispatch` swaps in the same loop with a wait of `DISPATCH_INTERVAL` for as long as a
simulation runs, and puts Flower's own back afterwards. Flower's ``run_api`` looks the loop
up by its module-global name when it starts the thread, so the swap must happen before
``run_simulation`` is called. The loop's body is Flower's, unchanged (one message per node
per pass); ``tests/unit/test_flwr_compat_server.py`` pins the digest of Flower's source and
runs the copy against the installed flwr's real in-memory LinkState.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

from flwr.app import Message

DISPATCH_INTERVAL = 0.01  # seconds between passes (Flower: 0.1)
_lock = threading.Lock()


def _dispatch_loop(interval: float) -> Any:
    """Flower's ``add_messages_to_queue`` with ``interval`` instead of 0.1 s."""

    def add_messages_to_queue(
        state: Any, queue: Queue[Message], nodes_mapping: Any, f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping.keys():  # noqa: SIM118 - as in Flower
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(interval)

    return add_messages_to_queue


@contextmanager
def quick_dispatch(interval: float = DISPATCH_INTERVAL) -> Iterator[None]:
    """Inside: simulations started in this process dispatch every ``interval`` seconds."""
    from flwr.server.superlink.fleet.vce import vce_api

    with _lock:
        original = vce_api.add_messages_to_queue
        vce_api.add_messages_to_queue = _dispatch_loop(interval)
    try:
        yield
    finally:
        with _lock:
            vce_api.add_messages_to_queue = original


__all__ = ["DISPATCH_INTERVAL", "quick_dispatch"]
