"""The coordinator's Flower internals (`federator.server._flwr_compat`) against the installed flwr.

The contract file for upgrading Flower. The reply pull runs on Flower's real ``HttpGrid``
(only the SuperLink's Runtime API answering it is ours) side by side with Flower's own
``pull_messages``; the SecAgg+ workflow is checked against Flower's real classes (its
behaviour under dropouts is in ``test_secagg.py``). When one fails after an upgrade, fix the
piece or run with ``federator run --stock-flower`` meanwhile.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections import Counter

import numpy as np
from fakes import FakeGrid, instruction, server_identity
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import (
    ConfirmMessageReceivedRequest,
    PullObjectRequest,
    PullObjectResponse,
)
from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullAppMessagesResponse
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid

from federator.server._flwr_compat import FlowerCompat
from federator.server._flwr_compat.patient_pull import pull_function


class FakeRuntime:
    """The SuperLink's Runtime API for one reply whose first array is still uploading."""

    def __init__(self, reply: Message, *, unavailable_for: int, lost: bool = False) -> None:
        self.reply = reply
        self.contents = {k: v.deflate() for k, v in get_all_nested_objects(reply).items()}
        self.slow = next(k for k in self.contents if k != reply.metadata.message_id)
        self.unavailable_for = unavailable_for
        self.lost = lost
        self.asked: Counter[str] = Counter()
        self.asked_at: list[float] = []
        self.confirmed: list[str] = []

    def PullMessages(self, req: PullAppMessagesRequest) -> PullAppMessagesResponse:
        assert list(req.message_ids) == [self.reply.metadata.reply_to_message_id]
        return PullAppMessagesResponse(
            messages_list=[message_to_proto(self.reply)],
            message_object_trees=[get_object_tree(self.reply)],
        )

    def PullObject(self, req: PullObjectRequest) -> PullObjectResponse:
        self.asked[req.object_id] += 1
        if req.object_id == self.slow:
            self.asked_at.append(time.monotonic())
            if self.lost:
                return PullObjectResponse(object_found=False)
            if self.asked[req.object_id] <= self.unavailable_for:
                return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(
            object_found=True, object_available=True, object_content=self.contents[req.object_id]
        )

    def ConfirmMessageReceived(self, req: ConfirmMessageReceivedRequest) -> None:
        self.confirmed.append(req.message_object_id)


def _reply() -> tuple[Message, Message]:
    with server_identity():
        ins = instruction(RecordDict({"c": ConfigRecord({"a": 1})}), node_id=5)
        content = RecordDict(
            {
                "arrays": ArrayRecord([np.arange(6, dtype=np.float32), np.ones((2, 2))]),
                "meta": ConfigRecord({"node": "site-a"}),
            }
        )
        reply = Message(content, reply_to=ins)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return ins, reply


def _grid(runtime: FakeRuntime) -> HttpGrid:
    grid = HttpGrid(token="t")
    grid._client = runtime  # type: ignore[assignment]
    grid.set_run(Run.create_empty(run_id=1))
    return grid


def test_the_reply_is_the_one_flowers_pull_returns_and_is_confirmed() -> None:
    ins, reply = _reply()
    ours_runtime, flowers_runtime = (FakeRuntime(reply, unavailable_for=1) for _ in range(2))
    (ours,) = pull_function(_grid(ours_runtime))([ins.metadata.message_id])
    (flowers,) = _grid(flowers_runtime).pull_messages([ins.metadata.message_id])
    assert ours.metadata == flowers.metadata
    assert ours.metadata.message_id == reply.metadata.message_id
    assert ours.content.array_records["arrays"].to_numpy_ndarrays()[0].tolist() == list(range(6))
    assert ours.content.config_records["meta"] == flowers.content.config_records["meta"]
    assert ours_runtime.confirmed == flowers_runtime.confirmed == [reply.metadata.message_id]
    # a part still uploading is asked for again soon (Flower waits 1 s)
    assert ours_runtime.asked[ours_runtime.slow] == 2
    first_retry = ours_runtime.asked_at[1] - ours_runtime.asked_at[0]
    flowers_retry = flowers_runtime.asked_at[1] - flowers_runtime.asked_at[0]
    assert first_retry < 0.5 < flowers_retry


def test_a_part_that_never_arrives_becomes_an_error_reply_like_flowers() -> None:
    ins, reply = _reply()
    runtime = FakeRuntime(reply, unavailable_for=0, lost=True)
    (ours,) = pull_function(_grid(runtime))([ins.metadata.message_id])
    (flowers,) = _grid(FakeRuntime(reply, unavailable_for=0, lost=True)).pull_messages(
        [ins.metadata.message_id]
    )
    assert ours.has_error()
    assert ours.error.code == flowers.error.code
    assert ours.metadata.reply_to_message_id == ins.metadata.message_id
    assert runtime.confirmed == []


def test_other_grids_pull_their_own_way() -> None:
    with server_identity():
        ins = instruction(RecordDict({"c": ConfigRecord({"a": 1})}), node_id=7)
    grid = FakeGrid({7: lambda m: Message(RecordDict(), reply_to=m)})
    grid.push_messages([ins])
    (reply,) = pull_function(grid)([ins.metadata.message_id])
    assert reply.metadata.reply_to_message_id == ins.metadata.message_id


def test_the_stock_switch_pulls_exactly_as_flower_does() -> None:
    ins, reply = _reply()
    runtime = FakeRuntime(reply, unavailable_for=1)
    (stock,) = FlowerCompat(stock=True).pull(_grid(runtime))([ins.metadata.message_id])
    assert stock.metadata.message_id == reply.metadata.message_id
    assert runtime.asked_at[1] - runtime.asked_at[0] > 0.5  # Flower's own 1 s backoff
    patched = FakeRuntime(reply, unavailable_for=1)
    FlowerCompat().pull(_grid(patched))([ins.metadata.message_id])
    assert patched.asked_at[1] - patched.asked_at[0] < 0.5


def test_the_pull_copy_still_matches_the_grid_it_was_copied_from() -> None:
    """Our pull reads these private parts of flwr 1.42's ``HttpGrid`` (real objects)."""
    grid = HttpGrid(token="t")
    assert hasattr(grid, "_runtime_client")
    assert inspect.signature(HttpGrid.pull_messages).parameters.keys() >= {"message_ids"}
    source = inspect.getsource(HttpGrid.pull_messages)
    for name in ("PullMessages", "ConfirmMessageReceived", "make_pull_object_fn_protobuf"):
        assert name in source, name


def test_the_secagg_switch_picks_flowers_workflow_or_our_subclass() -> None:
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    assert FlowerCompat(stock=True).secagg_workflow is SecAggPlusWorkflow
    ours = FlowerCompat().secagg_workflow
    assert issubclass(ours, SecAggPlusWorkflow)
    assert ours is not SecAggPlusWorkflow
    fields = {f.name for f in dataclasses.fields(WorkflowState)}
    assert {"active_node_ids", "sampled_node_ids", "nid_to_neighbours"} <= fields
    for stage in ("setup_stage", "share_keys_stage"):
        params = list(inspect.signature(getattr(SecAggPlusWorkflow, stage)).parameters)
        assert params == ["self", "grid", "context", "state"], stage


def test_flowers_dispatch_loop_is_the_one_the_quick_dispatch_copies() -> None:
    """``run_api`` starts the loop by its module-global name, and the loop is still one pass
    over the nodes (one message each), then a 0.1 s wait: what `quick_dispatch` copies."""
    from flwr.server.superlink.fleet.vce import vce_api

    assert "add_messages_to_queue" in vce_api.run_api.__code__.co_names
    params = list(inspect.signature(vce_api.add_messages_to_queue).parameters)
    assert params == ["state", "queue", "nodes_mapping", "f_stop"]
    source = inspect.getsource(vce_api.add_messages_to_queue)
    assert "state.get_message_ins(node_id=node_id, limit=1)" in source
    assert "f_stop.wait(0.1)" in source


def test_the_dispatch_switch_swaps_flowers_loop_for_the_quick_one_and_back() -> None:
    """Inside the switch the engine would start our loop (``run_api`` looks it up by name,
    above); the stock switch leaves Flower's; both put Flower's back. End to end, every
    simulation in the integration suite dispatches through the quick loop."""
    import threading
    from queue import Queue

    from flwr.server.superlink.fleet.vce import vce_api

    flowers = vce_api.add_messages_to_queue
    with FlowerCompat(stock=True).simulation_dispatch():
        assert vce_api.add_messages_to_queue is flowers
    with FlowerCompat().simulation_dispatch():
        ours = vce_api.add_messages_to_queue
        assert ours is not flowers
    assert vce_api.add_messages_to_queue is flowers

    class State:  # answers as the in-memory LinkState does: one message per node and pass
        def __init__(self) -> None:
            self.waiting = {7: ["a", "b"], 9: ["c"]}

        def get_message_ins(self, *, node_id: int, limit: int) -> list[str]:
            taken, self.waiting[node_id] = (
                self.waiting[node_id][:limit],
                self.waiting[node_id][limit:],
            )
            return taken

    queue: Queue[object] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=ours, args=(State(), queue, {7: 0, 9: 1}, stop))
    thread.start()
    got = [queue.get(timeout=5) for _ in range(3)]
    stop.set()
    thread.join(timeout=5)
    assert got == ["a", "c", "b"]  # one per node per pass, as Flower's loop hands them out
