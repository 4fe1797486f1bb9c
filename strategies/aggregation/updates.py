"""The replies' arrays as zero-copy views, checked to fit together; outputs built in place.

Flower's ``Array.numpy()`` deserialises a whole copy of each array (``np.load``), and
``Array(ndarray)`` serialises another; at 100 × 10 M float32 that is 8 GB of copying before
any arithmetic. Here every array is read where it lies: its bytes are NumPy's ``.npy`` format,
so after the header the payload *is* the array and `np.frombuffer` views it (read-only, no
copy). An aggregate is written straight into the ``.npy`` buffer it is sent in.

Work over coordinates runs in blocks (bounded scratch memory whatever the model size) on one
thread per core: NumPy releases the GIL inside its loops, so two cores do twice the work.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from federator import AggregationFailed

Flat = npt.NDArray[Any]  # any numeric dtype
Float64 = npt.NDArray[np.float64]

# Coordinates per block: the scratch of one block stays in a core's cache for small N.
BLOCK = 1 << 13
_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# Arrays smaller than this are done on the calling thread (threads cost more than they save).
_PARALLEL_MIN = 1 << 16


@dataclass(frozen=True)
class Layer:
    """One array key across all replies: its shape, dtype and one flat view per reply."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    views: tuple[Flat, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Updates:
    """The replies' models, layer by layer, in the first reply's key order."""

    layers: tuple[Layer, ...]
    count: int


def _flat_view(array: Array, key: str) -> Flat:
    """``array``'s elements as a flat C-order view of its bytes (a copy only for the rare
    Fortran-ordered payload)."""
    if array.stype != "numpy.ndarray":
        raise AggregationFailed(f"array {key!r} is not a NumPy array (stype {array.stype!r})")
    fp = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(fp)
        if version not in _READERS:  # format 3.0 (utf-8 header): rare, decode with a copy
            return cast(Flat, np.ascontiguousarray(array.numpy()).reshape(-1))
        shape, fortran, dtype = _READERS[version](fp)
    except ValueError as err:
        raise AggregationFailed(f"array {key!r} is not a readable .npy payload: {err}") from err
    if dtype.hasobject:
        raise AggregationFailed(f"array {key!r} holds Python objects, not numbers")
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=fp.tell())
    if fortran and len(shape) > 1:
        flat = np.ascontiguousarray(flat.reshape(shape[::-1]).T).reshape(-1)
    return flat


def _only_arrays(content: RecordDict) -> ArrayRecord:
    records = list(content.array_records.values())
    if len(records) != 1:
        raise AggregationFailed(f"a reply carries {len(records)} ArrayRecords, not one")
    return records[0]


def _layer(key: str, arrays: Sequence[ArrayRecord]) -> Layer:
    views = []
    for i, record in enumerate(arrays):
        if key not in record:
            raise AggregationFailed(f"reply {i} has no array {key!r}")
        views.append(_flat_view(record[key], key))
    first = arrays[0][key]
    shapes = {tuple(r[key].shape) for r in arrays}
    dtypes = {v.dtype for v in views}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise AggregationFailed(
            f"array {key!r} differs between replies: shapes {sorted(shapes)}, "
            f"dtypes {sorted(map(str, dtypes))}"
        )
    if not np.issubdtype(views[0].dtype, np.number) and views[0].dtype != np.bool_:
        raise AggregationFailed(f"array {key!r} has non-numeric dtype {views[0].dtype}")
    if any(v.size != int(np.prod(first.shape, dtype=np.int64)) for v in views):
        raise AggregationFailed(f"array {key!r}: payload size does not match its shape")
    return Layer(key, tuple(first.shape), views[0].dtype, tuple(views))


def decode(contents: Sequence[RecordDict]) -> Updates:
    """The replies' arrays as `Updates`; `AggregationFailed` if there are none or they do
    not fit together (other keys, shapes or dtypes)."""
    if not contents:
        raise AggregationFailed("no replies to aggregate")
    arrays = [_only_arrays(c) for c in contents]
    keys = list(arrays[0].keys())
    for i, record in enumerate(arrays[1:], start=1):
        if set(record.keys()) != set(keys):
            raise AggregationFailed(
                f"reply {i} has arrays {sorted(record.keys())}, reply 0 has {sorted(keys)}"
            )
    return Updates(tuple(_layer(k, arrays) for k in keys), len(arrays))


def weights_of(contents: Sequence[RecordDict], key: str) -> Float64:
    """Each reply's weight (metric ``key``) normalised to sum 1, as Flower's FedAvg does;
    `AggregationFailed` for a missing, negative or non-finite weight or a zero total."""
    raw = []
    for i, content in enumerate(contents):
        records: list[MetricRecord] = list(content.metric_records.values())
        value = records[0].get(key) if len(records) == 1 else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AggregationFailed(f"reply {i} has no numeric weight {key!r}")
        raw.append(float(value))
    if not all(math.isfinite(w) and w >= 0 for w in raw):
        raise AggregationFailed(f"weights {key!r} must be finite and non-negative: {raw}")
    total = sum(raw)  # in order, in Python floats: Flower's rounding
    if total <= 0:
        raise AggregationFailed(f"the weights {key!r} sum to {total}: nothing to average by")
    return np.asarray([w / total for w in raw], dtype=np.float64)


class Output:
    """An aggregated array written in place into its own ``.npy`` buffer."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> None:
        header = io.BytesIO()
        d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        try:
            np.lib.format.write_array_header_1_0(header, d)
        except ValueError:  # a header too long for format 1.0 (a huge shape tuple)
            header = io.BytesIO()
            np.lib.format.write_array_header_2_0(header, d)
        self._offset = len(header.getvalue())
        count = int(np.prod(shape, dtype=np.int64))
        self._buffer = bytearray(self._offset + count * dtype.itemsize)
        self._buffer[: self._offset] = header.getvalue()
        self.shape, self.dtype = shape, dtype
        self.flat: Flat = np.frombuffer(self._buffer, dtype=dtype, count=count, offset=self._offset)

    def array(self) -> Array:
        """The finished Flower `Array` (one copy into immutable bytes)."""
        self.flat = np.empty(0, dtype=self.dtype)  # drop the view before the buffer goes
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return Array(dtype=str(self.dtype), shape=self.shape, stype="numpy.ndarray", data=data)


def result_dtype(
    dtype: np.dtype[np.generic], reduce: Callable[[Flat], Flat]
) -> np.dtype[np.generic]:
    """The dtype Flower's NumPy expression ``reduce`` gives for inputs of ``dtype``."""
    return reduce(np.zeros((2, 1), dtype=dtype)).dtype


def workers() -> int:
    """Threads to use: the cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


@cache
def _pool() -> ThreadPoolExecutor:
    """One pool for the process: starting threads per array would cost more than small
    arrays take."""
    return ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="federator-agg")


def in_parallel(size: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(start, stop)`` over contiguous ranges covering ``range(size)``, one range
    per core (on this thread when ``size`` is small); exceptions propagate."""
    n = workers() if size >= _PARALLEL_MIN else 1
    bounds = [size * i // n for i in range(n + 1)]
    if n == 1:
        work(0, size)
        return
    futures = [_pool().submit(work, a, b) for a, b in pairwise(bounds)]
    for f in futures:
        f.result()


def blocks(start: int, stop: int, block: int = BLOCK) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive blocks of at most ``block`` coordinates."""
    return [(s, min(stop, s + block)) for s in range(start, stop, block)]


def gather(views: Sequence[Flat], s: int, e: int, out: Float64) -> Float64:
    """Coordinates ``s:e`` of every view as the rows of ``out[:, :e-s]`` (float64)."""
    block = out[:, : e - s]
    for i, v in enumerate(views):
        block[i] = v[s:e]
    return block


def gather_t(views: Sequence[Flat], s: int, e: int, out: Flat) -> Flat:
    """Coordinates ``s:e`` of every view as the *columns* of ``out[:e-s]`` (one row per
    coordinate: selection along a contiguous axis is several times faster)."""
    block = out[: e - s]
    for i, v in enumerate(views):
        block[:, i] = v[s:e]
    return block
