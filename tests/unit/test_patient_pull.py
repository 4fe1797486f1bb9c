"""The ServerApp's reply pull on a deployment: the same replies as Flower's own
``HttpGrid.pull_messages``, without its 1 s wait for a part that is still uploading."""

from __future__ import annotations

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

from federator.server.federation._patient_pull import pull_function


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
