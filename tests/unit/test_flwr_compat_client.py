"""The node's Flower internals (`federator.client._flwr_compat`) against the installed flwr.

The contract file for upgrading Flower: every test drives flwr's real objects — its node
state, object store, message serialisation and the private functions our SuperNode loop
calls — never a fake of Flower. When one fails after an upgrade, fix the piece named in the
test or run nodes with ``federator node start --stock-flower`` meanwhile.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import time
from pathlib import Path

import pytest
from fakes import instruction, server_identity
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SubStatus
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supernode.start_client_internal import _insert_message

from federator.client._flwr_compat import (
    STOCK_HEARTBEAT_INTERVAL,
    STOCK_PULL_INTERVAL,
    NodeRuntime,
    node_commands,
    node_loop,
)
from federator.client._flwr_compat.node_loop import (
    PULL_INTERVAL,
    _contents_ready,
    _Prefetched,
    _TaskAfterContents,
    patient,
    split_interval,
    wait_for_replies,
)


def test_interval_flag_is_taken_out_and_the_rest_left_for_flower() -> None:
    assert split_interval(["--insecure", "--port", "9"]) == (
        PULL_INTERVAL,
        ["--insecure", "--port", "9"],
    )
    assert split_interval(["--port", "9", "--pull-interval", "0.5", "--insecure"]) == (
        0.5,
        ["--port", "9", "--insecure"],
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--pull-interval"], "needs a number"),
        (["--pull-interval", "soon"], "'soon'"),
        (["--pull-interval", "0"], "(0, 60]"),
        (["--pull-interval", "61"], "(0, 60]"),
    ],
)
def test_bad_interval_is_refused_by_name(args: list[str], says: str) -> None:
    with pytest.raises(SystemExit, match="--pull-interval") as err:
        split_interval(args)
    assert says in str(err.value)


def _state_and_store():  # type: ignore[no-untyped-def]
    store_factory = ObjectStoreFactory()
    return NodeStateFactory(objectstore_factory=store_factory).state(), store_factory.store()


def _reply() -> tuple[Message, Message]:
    with server_identity():
        msg = instruction(RecordDict({"c": ConfigRecord({"a": 1})}), node_id=5)
        return msg, Message(RecordDict({"m": ConfigRecord({"b": 2})}), reply_to=msg)


def test_reply_is_handed_on_as_soon_as_the_clientapp_pushes_it() -> None:
    state, store = _state_and_store()
    msg, reply = _reply()
    pushed_at: list[float] = []

    def push() -> None:
        _insert_message(reply, state, store)  # what the Runtime API does for a ClientApp
        pushed_at.append(time.monotonic())

    threading.Timer(0.3, push).start()
    replies = wait_for_replies(state, store)
    waited = time.monotonic() - pushed_at[0]
    assert [r.metadata.reply_to_message_id for r in replies] == [msg.metadata.message_id]
    assert waited < 0.25  # Flower's own wait polls every 0.5 s
    # the replies were taken from the state; the view hands them to Flower's push once
    assert state.get_messages_legacy(is_reply=True) == []
    view = _Prefetched(state, replies)
    assert list(view.get_messages_legacy(is_reply=True)) == replies
    assert list(view.get_messages_legacy(is_reply=True)) == []
    assert view.get_node_id == state.get_node_id  # everything else is the real state


def test_the_private_flower_functions_it_drives_are_still_there() -> None:
    """flwr is pinned below 1.43; this fails loudly if a 1.42.x release moved them."""
    # the package re-exports a function of the same name: import the module itself
    flower_supernode = importlib.import_module("flwr.supernode.cli.flower_supernode")
    from flwr.supernode.start_client_internal import (
        _init_connection,
        _pull_and_store_message,
        _push_messages,
    )

    expected = {
        _init_connection: {
            "server_address",
            "insecure",
            "root_certificates",
            "authentication_keys",
        },
        _pull_and_store_message: {
            "state",
            "object_store",
            "node_config",
            "receive",
            "get_run",
            "get_fab",
            "pull_object",
            "confirm_message_received",
            "trusted_entities",
        },
        _push_messages: {"state", "object_store", "send", "push_object"},
        flower_supernode._start_supernode_http_api: {"config", "state_factory"},
    }
    for function, params in expected.items():
        assert params <= set(inspect.signature(function).parameters), function.__name__
    assert inspect.signature(flower_supernode._parse_supernode_lifespan_config).parameters == {}
    assert callable(node_loop.main)


def test_the_clientapp_task_is_created_only_after_the_contents_are_stored() -> None:
    state, _ = _state_and_store()
    view = _TaskAfterContents(state)
    assert view.create_task(task_type="clientapp", run_id=7, fab_hash="abc") == view.PLACEHOLDER
    assert state.get_tasks() == []  # nothing for the executor to start yet
    task_id = view.release()
    (task,) = state.get_tasks()
    assert (task.task_id, task.run_id, task.fab_hash, task.type) == (task_id, 7, "abc", "clientapp")
    assert view.release() is None  # once only


def test_a_failed_pull_leaves_no_task_and_real_tasks_still_finish() -> None:
    state, _ = _state_and_store()
    view = _TaskAfterContents(state)
    placeholder = view.create_task(task_type="clientapp", run_id=7)
    assert view.finish_task(placeholder, sub_status=SubStatus.FAILED, details="pull failed")
    assert view.release() is None
    assert state.get_tasks() == []
    real = state.create_task(task_type="clientapp", run_id=8)
    assert real is not None
    assert view.finish_task(real, sub_status=SubStatus.FAILED, details="pull failed")
    assert state.get_tasks()[0].status.status == "finished"


def test_a_missing_part_is_asked_for_again_soon_then_left_to_flowers_backoff() -> None:
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    clock = [0.0]
    asked: list[tuple[int, str]] = []

    def flaky(run_id: int, object_id: str) -> bytes:
        asked.append((run_id, object_id))
        if len(asked) < 3 or object_id == "never":
            raise ObjectUnavailableError(object_id)
        return b"contents"

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    pull = patient(flaky, poll=0.05, within=1.0, clock=lambda: clock[0], sleep=sleep)
    assert pull(3, "obj") == b"contents"
    assert asked == [(3, "obj")] * 3
    assert clock[0] == pytest.approx(0.1)
    with pytest.raises(ObjectUnavailableError):
        pull(3, "never")
    assert clock[0] == pytest.approx(1.1)


def test_the_heartbeat_interval_reaches_flowers_connection_and_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """flwr 1.42 reads the interval from module globals at call time; if that changes, our
    shorter session expiry silently stops working."""
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    assert node_loop.HEARTBEAT_INTERVAL >= HEARTBEAT_MIN_INTERVAL  # the SuperLink's floor
    monkeypatch.setattr(fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    node_loop.use_heartbeat_interval(node_loop.HEARTBEAT_INTERVAL)
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == node_loop.HEARTBEAT_INTERVAL
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == node_loop.HEARTBEAT_INTERVAL
    sent = inspect.getsource(fleet_http_connection.http_request_response)
    assert sent.count("heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") == 2  # activate + beat
    assert "HEARTBEAT_DEFAULT_INTERVAL" in inspect.getsource(heartbeat.HeartbeatSender._run)


def _run_known_to(state) -> int:  # type: ignore[no-untyped-def]
    from flwr.supercore.run import Run

    run = Run.create_empty(1)  # the run `server_identity` stamps on messages
    run.fab_hash = "f" * 64
    run.primary_task_type = "clientapp"
    state.store_run(run)
    return run.run_id


def _as_pushed() -> Message:
    """An instruction as a SuperLink hands it on: its id is its content's object id."""
    with server_identity():
        msg = Message(
            RecordDict({"c": ConfigRecord({"a": 1})}), dst_node_id=5, message_type="train"
        )
    msg.metadata.__dict__["_message_id"] = msg.object_id  # what Flower's Grid.push does
    return msg


def _pull_with_flower(view, store, msg, pull_object):  # type: ignore[no-untyped-def]
    """Flower's own `_pull_and_store_message` on the view, receiving ``msg``."""
    from flwr.supercore.inflatable.inflatable_object import get_object_tree
    from flwr.supernode.start_client_internal import _pull_and_store_message

    received = iter([(msg, get_object_tree(msg))])
    return _pull_and_store_message(
        state=view,
        object_store=store,
        node_config={},
        receive=lambda: next(received, None),
        get_run=lambda run_id: pytest.fail("the run is known"),
        get_fab=lambda fab_hash, run_id: pytest.fail("the FAB is known"),
        pull_object=pull_object,
        confirm_message_received=lambda run_id, message_id: None,
        trusted_entities=None,
    )


def test_flowers_pull_creates_the_task_through_the_view_before_it_pulls_the_contents() -> None:
    """The order `_TaskAfterContents` relies on: Flower asks for the task *before* it pulls
    the message's parts, so the view holds it back until the parts are stored."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    state, store = _state_and_store()
    run_id = _run_known_to(state)
    msg = _as_pushed()
    parts = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    tasks_seen_while_pulling: list[int] = []

    def pull_object(rid: int, object_id: str) -> bytes:
        tasks_seen_while_pulling.append(len(state.get_tasks()))
        return parts[object_id]

    view = _TaskAfterContents(state)
    assert _pull_with_flower(view, store, msg, pull_object) == run_id
    assert tasks_seen_while_pulling
    assert set(tasks_seen_while_pulling) == {0}
    assert state.get_tasks() == []  # held back by the view until now
    stored = state.get_messages_legacy(run_ids=[run_id], is_reply=False)
    assert [m.metadata.message_id for m in stored] == [msg.metadata.message_id]
    assert _contents_ready(store, stored[0])
    task_id = view.release()
    assert [t.task_id for t in state.get_tasks()] == [task_id]


def test_a_pull_that_fails_inside_flower_leaves_no_task_behind() -> None:
    """Flower answers a failed part pull with ``finish_task`` on the task it was given: the
    view's placeholder, so nothing is left for the executor to start."""
    state, store = _state_and_store()
    _run_known_to(state)
    msg = _as_pushed()

    def lost(rid: int, object_id: str) -> bytes:
        raise ConnectionError("the SuperLink went away")

    view = _TaskAfterContents(state)
    assert _pull_with_flower(view, store, msg, patient(lost)) is None
    assert view.release() is None
    assert state.get_tasks() == []
    assert state.get_messages_legacy(is_reply=False) == []  # Flower dropped the message


def test_flowers_push_takes_the_prefetched_reply_without_its_half_second_wait() -> None:
    from flwr.supernode.start_client_internal import _insert_message, _push_messages

    state, store = _state_and_store()
    _, reply = _reply()
    _insert_message(reply, state, store)
    replies = wait_for_replies(state, store)
    sent: list[str] = []

    def send(message: Message, tree: object, runtime: float) -> tuple[set[str], str]:
        sent.append(message.metadata.message_id)
        return set(), "session"

    started = time.monotonic()
    _push_messages(
        state=_Prefetched(state, replies),  # type: ignore[arg-type]
        object_store=store,
        send=send,
        push_object=lambda *args: None,
    )
    assert sent == [reply.metadata.message_id]
    assert time.monotonic() - started < 0.4  # Flower alone would sleep 0.5 s first


def test_the_stock_intervals_are_flowers() -> None:
    """What `--stock-flower` nodes announce and wait, as the installed flwr has them."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
    from flwr.supernode import start_client_internal

    assert STOCK_HEARTBEAT_INTERVAL == HEARTBEAT_DEFAULT_INTERVAL
    source = inspect.getsource(start_client_internal.start_client_internal)
    assert f"time.sleep({STOCK_PULL_INTERVAL:g})" in source


def test_stock_commands_are_flowers_own_and_refuse_a_pull_interval() -> None:
    stock = node_commands(
        NodeRuntime.STOCK, flower_args=["--insecure"], port=9101, pull_interval=None, parent_pid=1
    )
    assert Path(stock.supernode[0]).name == "flower-supernode"
    assert Path(stock.executor[0]).name == "flower-superexec"
    assert "federator" not in " ".join(stock.supernode + stock.executor)
    assert stock.supernode[-1] == "--insecure"
    assert stock.supernode[1:3] == ["--isolation", "process"]
    assert "127.0.0.1:9101" in stock.executor
    with pytest.raises(ValueError, match="stock Flower pulls every 3 s"):
        node_commands(NodeRuntime.STOCK, flower_args=[], port=9101, pull_interval=0.5, parent_pid=1)
    ours = node_commands(
        NodeRuntime.FEDERATOR, flower_args=[], port=9101, pull_interval=None, parent_pid=1
    )
    assert "federator.client._flwr_compat.node_loop" in ours.supernode
    assert ours.pull_interval == PULL_INTERVAL
    assert ours.heartbeat_interval == node_loop.HEARTBEAT_INTERVAL


@pytest.mark.parametrize("command", ["flower-supernode", "flower-superexec"])
def test_the_stock_commands_accept_the_arguments_we_give_them(command: str) -> None:
    """Flower's own argument parsers take every flag `node_commands` passes (real parsers)."""
    module, function = {
        "flower-supernode": ("flwr.supernode.cli.flower_supernode", "_parse_args_run_supernode"),
        "flower-superexec": ("flwr.supercore.cli.flower_superexec", "_parse_args"),
    }[command]
    parser = getattr(importlib.import_module(module), function)()
    stock = node_commands(
        NodeRuntime.STOCK,
        flower_args=["--insecure", "--superlink", "127.0.0.1:9092", "--node-config", "a=1"],
        port=9101,
        pull_interval=None,
        parent_pid=1,
    )
    args = stock.supernode if command == "flower-supernode" else stock.executor
    parser.parse_args(args[1:])  # SystemExit on an unknown flag
