"""Flower's SuperNode with a short pull interval.

Flower 1.42's ``flower-supernode`` sleeps a hard-coded 3 s after every pull that finds no
message, and checks for its ClientApp's reply every 0.5 s. A node that has just replied pulls
once, finds nothing (the coordinator is still aggregating) and sleeps: every message of a
round waits up to 3 s before the node even sees it. Neither interval is configurable.

``python -m federator.client._flwr_compat.node_loop [--pull-interval S] FLOWER-SUPERNODE-ARGS``
runs the same SuperNode — Flower's own argument parsing, Runtime API server, authenticated Fleet
connection, message pulling (run and FAB fetch, FAB verification, context) and reply pushing —
inside our loop, which removes three waits:

* it pulls every ``--pull-interval`` seconds (default `PULL_INTERVAL`) instead of 3 s. Each
  pull is one small authenticated request to the SuperLink; raise the interval for fleets of
  many nodes;
* a message part that has not reached the SuperLink yet is asked for again after
  `OBJECT_POLL` s, not after Flower's 1 s backoff (`patient`), and the ClientApp is started
  only once the whole message is stored (`_TaskAfterContents`) — otherwise its own pull of
  the contents backs off 1 s, 2 s, …;
* the ClientApp's reply is handed on as soon as it and its contents are stored (Flower: 0.5 s
  checks).

It also announces a `HEARTBEAT_INTERVAL` of 10 s (Flower's minimum; its SuperNode announces
30 s). The SuperLink holds a node's session open for two intervals after its last heartbeat
and refuses a second activation of the same key meanwhile, so a node that crashed and comes
back is admitted again within 20 s instead of 60 s (`federator node start` retries until then),
and the coordinator sees a dead node as offline as soon.

Only ``--isolation process`` is supported: the node's ClientApps are launched by
`federator.client._flwr_compat.warm_exec`. This drives private functions of flwr 1.42 (the
dependency is pinned below 1.43); ``tests/unit/test_flwr_compat_client.py`` runs them against the
installed flwr. ``federator node start --stock-flower`` runs Flower's own SuperNode instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from logging import INFO
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.supercore.object_store import ObjectStore
    from flwr.supernode.nodestate import NodeState

PULL_INTERVAL = 0.2  # seconds between empty pulls (Flower: 3 s)
REPLY_POLL = 0.02  # seconds between checks for the ClientApp's reply (Flower: 0.5 s)
OBJECT_POLL = 0.05  # seconds between asks for a message part not yet at the SuperLink (1 s)
HEARTBEAT_INTERVAL = 10.0  # seconds announced to the SuperLink (Flower: 30 s; minimum 10 s)
_FLAG = "--pull-interval"


class _Prefetched:
    """A `NodeState` whose next reply query returns replies already taken from it.

    Flower's ``_push_messages`` waits for replies in 0.5 s steps; we wait in short steps
    ourselves (which marks the replies retrieved) and hand them over through this view.
    Everything else goes to the real state.
    """

    def __init__(self, state: NodeState, replies: Sequence[Message]) -> None:
        self._state = state
        self._replies = list(replies)

    def get_messages_legacy(
        self,
        *,
        run_ids: Sequence[int] | None = None,
        is_reply: bool | None = None,
        limit: int | None = None,
    ) -> Sequence[Message]:
        if is_reply and self._replies and run_ids is None and limit is None:
            replies, self._replies = self._replies, []
            return replies
        return self._state.get_messages_legacy(run_ids=run_ids, is_reply=is_reply, limit=limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class _TaskAfterContents:
    """A `NodeState` view that creates the ClientApp's task only once the message is complete.

    Flower's ``_pull_and_store_message`` creates the task *before* it pulls the message's
    contents from the SuperLink. Our executor acquires the task at once, its ClientApp asks
    for contents that are not stored yet, and Flower's object pull then backs off for 1 s,
    2 s, … The view records the task; `release` creates it after the contents are stored.
    A pull that failed (``finish_task`` on the recorded task) leaves no task behind, as
    Flower's would leave a failed one that nothing runs.
    """

    PLACEHOLDER = -1  # a task id Flower never hands out (its ids are unsigned)

    def __init__(self, state: NodeState) -> None:
        self._state = state
        self._pending: tuple[str, int, str | None] | None = None

    def create_task(self, *, task_type: str, run_id: int, fab_hash: str | None = None) -> int:
        self._pending = (task_type, run_id, fab_hash)
        return self.PLACEHOLDER

    def finish_task(self, task_id: int, sub_status: str, details: str) -> bool:
        if task_id == self.PLACEHOLDER:
            self._pending = None
            return True
        return self._state.finish_task(task_id, sub_status=sub_status, details=details)

    def release(self) -> int | None:
        """Create the recorded task (if any) in the real state; its id."""
        if self._pending is None:
            return None
        task_type, run_id, fab_hash = self._pending
        self._pending = None
        for _ in range(3):  # ids are random 64-bit numbers: a collision is vanishingly rare
            task_id = self._state.create_task(task_type=task_type, run_id=run_id, fab_hash=fab_hash)
            if task_id is not None:
                return task_id
        raise RuntimeError(f"could not create a ClientApp task for run {run_id}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def patient(
    pull_object: Callable[[int, str], bytes],
    *,
    poll: float = OBJECT_POLL,
    within: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[int, str], bytes]:
    """``pull_object`` retrying an object that is not there yet every ``poll`` seconds.

    The coordinator pushes a message, then its contents; a node that pulls in between finds
    an object missing, and Flower backs off 1 s before asking again. For ``within`` seconds
    this asks again every ``poll`` s instead; after that Flower's own backoff takes over.
    """
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    def pull(run_id: int, object_id: str) -> bytes:
        deadline = clock() + within
        while True:
            try:
                return pull_object(run_id, object_id)
            except ObjectUnavailableError:
                if clock() >= deadline:
                    raise
                sleep(poll)

    return pull


def _contents_ready(store: ObjectStore, message: Message) -> bool:
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    tree = store.get_object_tree(message.metadata.message_id)
    return all(store.get(t.object_id) != b"" for t in iterate_object_tree(tree))


def wait_for_replies(
    state: NodeState,
    store: ObjectStore,
    *,
    poll: float = REPLY_POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Message]:
    """Block until the ClientApp has pushed its reply (and the reply's contents); return it."""
    while not (replies := list(state.get_messages_legacy(is_reply=True))):
        sleep(poll)
    for reply in replies:
        while not _contents_ready(store, reply):
            sleep(poll)
    return replies


def split_interval(argv: Sequence[str]) -> tuple[float, list[str]]:
    """Take ``--pull-interval S`` out of the arguments; the rest are Flower's."""
    args = list(argv)
    interval = PULL_INTERVAL
    if _FLAG in args:
        at = args.index(_FLAG)
        if at + 1 >= len(args):
            raise SystemExit(f"{_FLAG} needs a number of seconds")
        try:
            interval = float(args[at + 1])
        except ValueError:
            raise SystemExit(f"{_FLAG} must be a number of seconds, got {args[at + 1]!r}") from None
        if not 0 < interval <= 60:
            raise SystemExit(f"{_FLAG} must be in (0, 60] seconds, got {interval}")
        del args[at : at + 2]
    return interval, args


def use_heartbeat_interval(seconds: float) -> None:
    """Make this process's Fleet connection announce (and keep) a heartbeat interval of
    ``seconds``: flwr 1.42 reads the module constant at each call, in the connection (which
    announces it) and in the heartbeat sender (which sends every ``0.8 × (interval − 5)`` s)."""
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for module in (fleet_http_connection, heartbeat):
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", seconds)  # noqa: B010 (a private name)


def run(pull_interval: float) -> None:
    """Flower's ``flower_supernode()`` and ``start_client_internal`` (process isolation), with
    our pull loop; runs until the process is signalled."""
    from flwr.common.constant import ISOLATION_MODE_PROCESS
    from flwr.supercore.exit import ExitCode, flwr_exit
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.cli.flower_supernode import _parse_supernode_lifespan_config
    from flwr.supernode.nodestate import NodeStateFactory
    from flwr.supernode.start_client_internal import _init_connection

    config = _parse_supernode_lifespan_config()
    if config.isolation != ISOLATION_MODE_PROCESS:
        raise SystemExit("federator's SuperNode loop runs with --isolation process only")
    if config.insecure and config.authentication_keys is not None:
        flwr_exit(
            ExitCode.SUPERNODE_STARTED_WITHOUT_TLS_BUT_NODE_AUTH_ENABLED,
            "node authentication needs a TLS connection to the SuperLink",
        )
    object_store_factory = ObjectStoreFactory()
    state_factory = NodeStateFactory(objectstore_factory=object_store_factory)
    _serve_runtime_api(config, state_factory)
    state = state_factory.state()
    use_heartbeat_interval(HEARTBEAT_INTERVAL)
    with _init_connection(
        server_address=config.server_address,
        insecure=config.insecure,
        root_certificates=config.root_certificates,
        authentication_keys=config.authentication_keys,
        max_retries=config.max_retries,
        max_wait_time=config.max_wait_time,
    ) as conn:
        _pull_loop(
            conn,
            config,
            state=state,
            store=object_store_factory.store(),
            pull_interval=pull_interval,
        )


def _serve_runtime_api(config: Any, state_factory: Any) -> None:
    """Flower's SuperNode HTTP API (what the executor and ClientApps talk to), stopped on exit."""
    from flwr.supercore.exit import add_exit_handler, register_signal_handlers
    from flwr.supercore.telemetry import EventType
    from flwr.supernode.cli.flower_supernode import _start_supernode_http_api

    http_server, http_thread = _start_supernode_http_api(config, state_factory)

    def stop_http_server() -> None:
        http_server.should_exit = True
        http_thread.join(timeout=5)
        http_server.force_exit = True

    add_exit_handler(stop_http_server)
    register_signal_handlers(
        event_type=EventType.RUN_SUPERNODE_LEAVE,
        exit_message="SuperNode terminated gracefully.",
        grpc_servers=[],
    )


def _pull_loop(
    conn: Any, config: Any, *, state: NodeState, store: ObjectStore, pull_interval: float
) -> None:
    """Pull a message, start its ClientApp once it is whole, hand on the reply; forever."""
    from flwr.supercore import log
    from flwr.supernode.start_client_internal import _pull_and_store_message, _push_messages

    node_id, receive, send, get_run, get_fab, pull_object, push_object, confirm = conn
    state.set_node_id(node_id)
    log(INFO, "SuperNode ID: %s (pulling every %.2f s)", node_id, pull_interval)
    pull_object = patient(pull_object)
    while True:
        view = _TaskAfterContents(state)
        run_id = _pull_and_store_message(
            state=cast("NodeState", view),
            object_store=store,
            node_config=config.node_config,
            receive=receive,
            get_run=get_run,
            get_fab=get_fab,
            pull_object=pull_object,
            confirm_message_received=confirm,
            trusted_entities=config.trusted_entities,
        )
        if run_id is None:
            time.sleep(pull_interval)
            continue
        view.release()  # the message and its contents are stored: the ClientApp may start
        replies = wait_for_replies(state, store)
        _push_messages(
            state=cast("NodeState", _Prefetched(state, replies)),
            object_store=store,
            send=send,
            push_object=push_object,
        )


def main(argv: Sequence[str] | None = None) -> None:
    interval, flower_args = split_interval(sys.argv[1:] if argv is None else argv)
    sys.argv = ["flower-supernode", *flower_args]
    run(interval)


if __name__ == "__main__":
    main()
