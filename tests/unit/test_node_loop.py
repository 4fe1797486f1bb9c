"""Our SuperNode pull loop: its flag, the reply hand-over through Flower's real NodeState and
ObjectStore, and the private flwr 1.42 functions it drives."""

from __future__ import annotations

import importlib
import inspect
import threading
import time

import pytest
from fakes import instruction, server_identity
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SubStatus
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supernode.start_client_internal import _insert_message

from federator.client import _node_loop
from federator.client._node_loop import (
    PULL_INTERVAL,
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
    assert callable(_node_loop.main)


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
