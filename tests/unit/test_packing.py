"""One safetensors array per message on a deployment: lossless, order-preserving, safe to
read, fewer objects on the wire, and invisible to everything between the two ends."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from fakes import FakeGrid, instruction, server_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federator import UpdateRejected
from federator.client.mods import packed_io
from federator.client.packing import PACKED, is_packed, pack, pack_content, unpack
from federator.server.federation.exchange import UNREADABLE_REPLY, Exchange


def _record() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {
            "fc2.weight": Array(rng.normal(size=(10, 64)).astype(np.float32)),
            "fc1.bias": Array(rng.normal(size=64).astype(np.float32)),
            "steps": Array(np.array([3], dtype=np.int64)),
            "fc1.weight": Array(rng.normal(size=(64, 64)).astype(np.float32)),
        }
    )


def test_round_trip_keeps_names_order_shapes_dtypes_and_values() -> None:
    record = _record()
    packed = pack(record)
    assert is_packed(packed)
    assert not is_packed(record)
    back = unpack(packed)
    assert list(back) == list(record)  # the sender's order, not sorted
    for name, array in record.items():
        assert back[name].numpy().dtype == array.numpy().dtype
        np.testing.assert_array_equal(back[name].numpy(), array.numpy())


def test_a_packed_message_is_fewer_objects() -> None:
    with server_identity():
        msg = instruction(RecordDict({"arrays": _record(), "config": ConfigRecord()}), node_id=1)
        packed = instruction(
            RecordDict({"arrays": pack(_record()), "config": ConfigRecord()}), node_id=1
        )
    assert len(get_all_nested_objects(packed)) < len(get_all_nested_objects(msg)) - 4


@settings(max_examples=30, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_round_trip_is_exact_for_any_arrays(arrays: list[np.ndarray]) -> None:
    record = ArrayRecord({f"w{i}": Array(np.ascontiguousarray(a)) for i, a in enumerate(arrays)})
    back = unpack(pack(record))
    for name, array in record.items():
        np.testing.assert_array_equal(back[name].numpy(), array.numpy())  # NaNs compare equal


def _blob(record: ArrayRecord) -> bytes:
    return record[PACKED].numpy().tobytes()


def _as_packed(blob: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})


def _with_header(blob: bytes, change: bytes, to: bytes) -> bytes:
    (size,) = struct.unpack("<Q", blob[:8])
    header = blob[8 : 8 + size].replace(change, to)
    return struct.pack("<Q", len(header)) + header + blob[8 + size :]


@pytest.mark.parametrize(
    ("packed", "says"),
    [
        (lambda b: _as_packed(b"\x00" * 3), "not a readable safetensors"),
        (lambda b: _as_packed(b[: len(b) // 2]), "not a readable safetensors"),
        (lambda b: _as_packed(b"\xff" * 8 + b[8:]), "not a readable safetensors"),
        (
            lambda b: _as_packed(_with_header(b, b'\\"steps\\"', b'\\"other\\"')),
            "key order",
        ),
        (
            lambda b: ArrayRecord(
                {PACKED: Array(np.frombuffer(b, dtype=np.uint8).astype(np.int16))}
            ),
            "1-D uint8",
        ),
    ],
)
def test_a_bad_blob_is_rejected_with_the_reason(packed, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpdateRejected, match=says):
        unpack(packed(_blob(pack(_record()))))


def test_the_handler_sees_per_layer_arrays_and_answers_packed() -> None:
    seen: list[list[str]] = []

    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        seen.append(list(arrays))
        doubled = ArrayRecord({k: Array(v.numpy() * 2) for k, v in arrays.items()})
        return Message(RecordDict({"arrays": doubled}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with server_identity():
        msg = instruction(RecordDict({"arrays": pack(_record())}), node_id=1)
        reply = packed_io(msg, context, train)
        plain = packed_io(instruction(RecordDict({"arrays": _record()}), node_id=1), context, train)
    assert seen == [list(_record())] * 2
    assert is_packed(reply.content.array_records["arrays"])  # answered in kind
    assert not is_packed(plain.content.array_records["arrays"])  # simulation: untouched
    got = unpack(reply.content.array_records["arrays"])
    np.testing.assert_array_equal(got["fc1.bias"].numpy(), _record()["fc1.bias"].numpy() * 2)


def test_the_exchange_unpacks_replies_and_turns_an_unreadable_one_into_an_error() -> None:
    def echo(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": msg.content.array_records["arrays"]}), reply_to=msg)

    on_the_wire: list[list[str]] = []

    def good(msg: Message) -> Message:
        on_the_wire.append(list(msg.content.array_records["arrays"]))
        return packed_io(msg, Context(1, 1, {}, RecordDict(), {}), echo)

    def garbage(msg: Message) -> Message:
        return Message(RecordDict({"arrays": _as_packed(b"not safetensors")}), reply_to=msg)

    grid = FakeGrid({1: good, 2: garbage})
    exchange = Exchange(grid)
    exchange._packed = True  # as on a deployment (an HttpGrid)
    with server_identity():
        msgs = [instruction(RecordDict({"arrays": _record()}), node_id=n) for n in (1, 2)]
        replies = {r.metadata.src_node_id: r for r in exchange(msgs, timeout=1.0)}
    assert on_the_wire == [[PACKED]]  # one array on the wire
    assert list(replies[1].content.array_records["arrays"]) == list(_record())
    assert replies[2].has_error()
    assert replies[2].error.code == UNREADABLE_REPLY
    assert "not a readable safetensors" in replies[2].error.reason


def test_a_record_sent_to_every_node_is_packed_once() -> None:
    record = _record()
    with server_identity():
        msgs = [instruction(RecordDict({"arrays": record}), node_id=n) for n in (1, 2, 3)]
    packed: dict[int, ArrayRecord] = {}
    for msg in msgs:
        pack_content(msg, packed=packed)
    assert len(packed) == 1
    records = [m.content.array_records["arrays"] for m in msgs]
    assert all(r is records[0] for r in records)
    assert list(unpack(records[0])) == list(record)
