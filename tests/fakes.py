"""Test doubles for Federator's own logic (never the only test of an integration).

`FakeGrid` delivers messages to in-process handlers — typically the real ClientApp handlers —
so the round loop and the wrapper strategy can be tested in milliseconds. The real Flower
Simulation Engine is exercised by the integration tests.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Handler = Callable[[Message], Message | None]


@contextmanager
def server_identity() -> Iterator[None]:
    """Let tests create instruction Messages as a ServerApp would (Flower requires an identity)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _stamp(msg: Message) -> Message:
    msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msg


def instruction(content: RecordDict, *, node_id: int, kind: str = "train") -> Message:
    """An instruction message to ``node_id`` (call inside `server_identity`)."""
    return _stamp(Message(content=content, dst_node_id=node_id, message_type=kind))


class FakeGrid(Grid):
    """Node id → handler; a handler returning None simulates a node that never replies."""

    def __init__(self, handlers: dict[int, Handler]) -> None:
        self.handlers = handlers
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; keep the reply until it is pulled."""
        ids = []
        for msg in messages:
            _stamp(msg)
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            reply = self.handlers[msg.metadata.dst_node_id](msg)
            if reply is not None:
                reply.metadata.__dict__["_reply_to_message_id"] = msg.metadata.message_id
                self._replies[msg.metadata.message_id] = _stamp(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            _stamp(msg)
            self.sent.append(msg)
            reply = self.handlers[msg.metadata.dst_node_id](msg)
            if reply is not None:
                replies.append(_stamp(reply))
        return replies


def client_context(partition: int, partitions: int, node_id: int) -> Context:
    """The Context Flower's simulation gives a ClientApp for ``partition``."""
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition, "num-partitions": partitions},
        state=RecordDict(),
        run_config={},
    )


def client_handlers(partitions: int, *, id_seed: int = 0) -> dict[int, Handler]:
    """Handlers running Federator's real ClientApp code for each simulated partition.

    Node ids are random (from ``id_seed``), like Flower's: unrelated to partition order.
    """
    import random

    from federator.client import app as client
    from federator.client.mods import refusing

    def make(pid: int, node_id: int) -> Handler:
        ctx = client_context(pid, partitions, node_id)

        def handle(msg: Message) -> Message:
            kind = msg.metadata.message_type
            fn = {"train": client.train, "evaluate": client.evaluate, "query": client.hello}[kind]
            return refusing(msg, ctx, fn)

        return handle

    rng = random.Random(id_seed)
    return {(node_id := rng.getrandbits(63)): make(pid, node_id) for pid in range(partitions)}


class VirtualClock:
    """A clock that only moves when something sleeps: timeouts pass instantly in tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """An observer that keeps what a federation reported (start, rounds, waits)."""

    def __init__(self) -> None:
        self.started: object | None = None
        self.rounds: list[Any] = []
        self.waits: list[tuple[int, int]] = []

    def on_waiting(self, connected: int, needed: int) -> None:
        self.waits.append((connected, needed))

    def on_start(self, event: object) -> None:
        self.started = event

    def on_round(self, outcome: Any) -> None:
        self.rounds.append(outcome)


def run_in_process(plan: Any, grid: FakeGrid, *, keys: Any = None) -> tuple[Any, Recorder]:
    """Run ``plan``'s whole federation on ``grid`` (nodes' names proven against ``keys``, a
    `NodeKeys`, if given); the node directory and what the observers saw. A silent node's
    timeout passes at once (virtual clock)."""
    from federator.server.federation.exchange import Exchange
    from federator.server.federation.instructions import ServerEvaluator
    from federator.server.federation.nodes import NodeDirectory
    from federator.server.federation.rounds import Federation
    from federator.simulations.partition import server_holdout

    clock, rec = VirtualClock(), Recorder()
    exchange = Exchange(grid, clock=clock, sleep=clock.sleep)
    directory = NodeDirectory(grid, salt="t", keys=keys, exchange=exchange)
    Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=directory,
        observers=[rec],
        exchange=exchange,
    ).run()
    return directory, rec


@contextmanager
def without_gc_collect() -> Iterator[None]:
    """Flower's Bulyan reads its replies with `to_numpy_ndarrays(keep_input=False)`, which runs
    a full `gc.collect()` after every array. That changes no value, but in a test process that
    holds torch, MLflow and every earlier test's objects each call costs ~70 ms (100 s of one
    Hypothesis test). Flower's strategies run under this in our comparisons."""
    with mock.patch.object(gc, "collect", return_value=0):
        yield
