"""A message's model travels as one safetensors blob on a deployment, not one array per layer.

Flower sends every array of a message as separate objects (the array and its data chunk), and
on a deployment each object is one authenticated request to the SuperLink, which answers it
from its database. For the small models of cross-silo studies those requests, not the bytes,
are what a round waits for: a 2-layer MLP's train message is 12 objects, its reply 13.

On a deployment the coordinator therefore packs the ``arrays`` record of each message it
sends into a single uint8 array holding a safetensors file (names, shapes and dtypes in its
header, key order in its metadata) and unpacks the replies; the ClientApp unpacks what it
receives and packs what it returns. Everything between — strategies, screening, DP clipping,
training — sees ordinary per-layer ArrayRecords. Safetensors is a data-only format: unpacking
executes nothing, and a blob that is not a well-formed file is rejected with the reason.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from safetensors import SafetensorError
from safetensors.numpy import load, save

from federator import UpdateRejected

ARRAYS = "arrays"  # the content key whose record is packed
PACKED = "federator.safetensors"  # the packed record's only key
_ORDER = "federator.order"  # safetensors metadata: the record's key order

Handler = Callable[[Message, Context], Message]


def pack(record: ArrayRecord) -> ArrayRecord:
    """``record`` as one uint8 array holding a safetensors file."""
    tensors = {name: np.ascontiguousarray(array.numpy()) for name, array in record.items()}
    blob = save(tensors, metadata={_ORDER: json.dumps(list(tensors))})
    return ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})


def is_packed(record: ArrayRecord) -> bool:
    return list(record.keys()) == [PACKED]


def unpack(record: ArrayRecord) -> ArrayRecord:
    """The per-layer record `pack` packed; `UpdateRejected` naming what is wrong."""
    array = record[PACKED]
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise UpdateRejected(
            f"packed arrays must be a 1-D uint8 array, got {array.dtype} {array.shape}"
        )
    blob = array.numpy().tobytes()
    try:
        tensors = load(blob)
        order = _key_order(blob)
    except (SafetensorError, ValueError, struct.error) as err:
        raise UpdateRejected(f"packed arrays are not a readable safetensors file: {err}") from None
    if sorted(order) != sorted(tensors):
        raise UpdateRejected("packed arrays: the key order does not list the arrays it holds")
    return ArrayRecord({name: Array(np.ascontiguousarray(tensors[name])) for name in order})


def _key_order(blob: bytes) -> list[str]:
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(blob[8 : 8 + size])
    order = json.loads(header.get("__metadata__", {}).get(_ORDER, "null"))
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
        raise ValueError("no key order in the metadata")
    return order


def pack_content(msg: Message, *, packed: dict[int, ArrayRecord] | None = None) -> None:
    """Pack ``msg``'s ``arrays`` record (if it has one).

    ``packed`` maps records already packed (by ``id``) to their packed form: a strategy sends
    the same record to every node, and it is serialised once. The message gets a new content:
    changing a record of a message pulled from the SuperNode in place does not stick (Flower
    1.42), replacing its content does."""
    if not msg.has_content() or (record := msg.content.array_records.get(ARRAYS)) is None:
        return
    if packed is None:
        _replace(msg, pack(record))
        return
    if id(record) not in packed:
        packed[id(record)] = pack(record)
    _replace(msg, packed[id(record)])


def unpack_content(msg: Message) -> bool:
    """Unpack ``msg``'s ``arrays`` record (a new content, as in `pack_content`); whether it
    was packed.

    Raises `UpdateRejected` if it was packed but cannot be read."""
    if not msg.has_content():
        return False
    record = msg.content.array_records.get(ARRAYS)
    if record is None or not is_packed(record):
        return False
    _replace(msg, unpack(record))
    return True


def _replace(msg: Message, record: ArrayRecord) -> None:
    """Give ``msg`` a new content with ``record`` as its arrays (the rest unchanged)."""
    content = RecordDict(dict(msg.content.items()))
    content[ARRAYS] = record
    msg.content = content
