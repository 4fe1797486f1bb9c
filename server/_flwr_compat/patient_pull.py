"""Pulling replies from a deployed SuperLink without Flower's 1 s first backoff.

A node registers its reply with the SuperLink, then uploads the reply's parts (each array is
one upload). The SuperLink hands the reply to the ServerApp as soon as it is registered, and
when a part is still uploading Flower's ``HttpGrid.pull_messages`` waits 1 s, then 2 s, …
before asking again. Federator's exchange polls every 0.1 s, so it nearly always finds a reply
mid-upload, and nearly every deployed round paid that second.

`pull_function` returns, for Flower's ``HttpGrid`` (a deployment), the same pull — same
requests, same error reply for parts that never arrive, same confirmation — asking again
after `FIRST_BACKOFF` s and doubling up to `BACKOFF_CAP`; for any other grid (simulation,
test fakes) the grid's own ``pull_messages``. It drives private attributes of flwr 1.42's
``HttpGrid`` (the dependency is pinned below 1.43); ``tests/unit/test_flwr_compat_server.py``
runs it against the installed flwr's ``HttpGrid``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import ERROR

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_BACKOFF = 0.02  # seconds before asking again for a reply part still uploading (Flower: 1)
BACKOFF_CAP = 1.0  # seconds; Flower: 10

Pull = Callable[[Iterable[str]], list[Message]]


def deployed(grid: Grid) -> bool:
    """Whether ``grid`` talks to a real SuperLink (rather than a simulation or a test fake)."""
    from flwr.superlink.grid.http_grid import HttpGrid

    return isinstance(grid, HttpGrid)


def pull_function(grid: Grid) -> Pull:
    """How to pull replies from ``grid`` (see the module docstring)."""
    if deployed(grid):
        return lambda message_ids: _pull_http(grid, message_ids)
    return lambda message_ids: list(grid.pull_messages(message_ids))


def _pull_http(grid: object, message_ids: Iterable[str]) -> list[Message]:
    """Flower 1.42's ``HttpGrid.pull_messages`` with our backoff."""
    from typing import cast

    import httpx
    from flwr.app import Metadata
    from flwr.app.error import Error
    from flwr.app.message import make_message
    from flwr.common.constant import ErrorCode
    from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest
    from flwr.supercore import log
    from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE
    from flwr.supercore.date import now
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import (
        ObjectPullError,
        inflate_object_from_contents,
        pull_objects,
    )
    from flwr.superlink.grid.http_grid import HttpGrid

    assert isinstance(grid, HttpGrid)
    run_id = grid.run.run_id
    client = grid._runtime_client
    try:
        res = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    except httpx.HTTPStatusError as err:
        if err.response.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            log(ERROR, "pulling replies: the SuperLink's answer is too large (%s)", err)
            return []
        raise
    replies: list[Message] = []
    for msg_proto, tree in zip(res.messages_list, res.message_object_trees, strict=True):
        msg_id = msg_proto.metadata.message_id
        try:
            contents = pull_objects(
                object_ids=[t.object_id for t in iterate_object_tree(tree)],
                pull_object_fn=make_pull_object_fn_protobuf(
                    pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id
                ),
                initial_backoff=FIRST_BACKOFF,
                backoff_cap=BACKOFF_CAP,
            )
        except ObjectPullError as err:  # as Flower does: an error reply in its place
            metadata = Metadata(
                run_id=run_id,
                message_id="",
                src_node_id=grid.node.node_id,
                dst_node_id=grid.node.node_id,
                message_type=SYSTEM_MESSAGE_TYPE,
                group_id="",
                ttl=0,
                reply_to_message_id=msg_proto.metadata.reply_to_message_id,
                created_at=now().timestamp(),
            )
            reason = f"Reply message objects are unavailable. {err}"
            replies.append(
                make_message(metadata=metadata, error=Error(ErrorCode.MESSAGE_UNAVAILABLE, reason))
            )
            continue
        client.ConfirmMessageReceived(
            ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id, message_object_id=msg_id)
        )
        message = cast(Message, inflate_object_from_contents(msg_id, contents))
        message.metadata.__dict__["_message_id"] = msg_id
        replies.append(message)
    return replies
