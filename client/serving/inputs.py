"""The request edge of the model service: a JSON body becomes a float32 batch, or a clear error.

A ``POST /predict`` body is ``{"inputs": [...]}``: a list of rows, each either flat (as many
numbers as one example has, e.g. 64 for an 8×8 digit) or shaped like one example
(``[[...], ...]`` for an image). A single example may be sent as one row. Everything else —
not JSON, no ``inputs``, ragged rows, non-numbers, NaN or infinities, the wrong number of
features, more rows or bytes than the limits allow — is a `RequestRejected` naming what is
wrong, with the HTTP status to answer (400 malformed, 413 too large, 422 does not fit).

A body sent as ``Content-Type: application/octet-stream`` is the batch itself: little-endian
float32 numbers, row after row, as many per row as one example has (what
``array.astype("<f4").tobytes()`` gives). It skips writing and parsing decimal text — most of
a 28×28 image's request time in JSON — and is checked the same way (whole rows, finite, within
the limits).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from federator import RequestRejected

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_ROWS = 4096
RAW_FLOAT32 = "application/octet-stream"  # the Content-Type of a raw float32 batch


@dataclass(frozen=True)
class Limits:
    """How much one request may carry."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_rows: int = DEFAULT_MAX_ROWS


def parse_inputs(
    body: bytes, *, input_shape: tuple[int, ...], limits: Limits
) -> npt.NDArray[np.float32]:
    """The batch in ``body``, shaped ``(n, *input_shape)``; `RequestRejected` otherwise."""
    if len(body) > limits.max_body_bytes:
        raise RequestRejected(
            f"the body has {len(body)} bytes; at most {limits.max_body_bytes} are accepted",
            status=413,
        )
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestRejected(f"the body is not JSON ({err})", status=400) from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise RequestRejected('the body must be a JSON object with "inputs"', status=400)
    return to_batch(document["inputs"], input_shape=input_shape, limits=limits)


def parse_raw(
    body: bytes, *, input_shape: tuple[int, ...], limits: Limits
) -> npt.NDArray[np.float32]:
    """The batch in a raw little-endian float32 ``body`` (`RAW_FLOAT32`), shaped
    ``(n, *input_shape)``; `RequestRejected` otherwise."""
    if len(body) > limits.max_body_bytes:
        raise RequestRejected(
            f"the body has {len(body)} bytes; at most {limits.max_body_bytes} are accepted",
            status=413,
        )
    row_bytes = 4 * math.prod(input_shape)
    if not body or len(body) % row_bytes:
        raise RequestRejected(
            f"a raw float32 body of {len(body)} bytes is not a whole number of rows of "
            f"{row_bytes} bytes ({math.prod(input_shape)} float32 numbers, input "
            f"{list(input_shape)})",
            status=422,
        )
    rows = len(body) // row_bytes
    if rows > limits.max_rows:
        raise RequestRejected(
            f"{rows} rows in one request; at most {limits.max_rows} are accepted", status=413
        )
    array = np.frombuffer(body, dtype="<f4").astype(np.float32, copy=True)
    return _finite(array.reshape((rows, *input_shape)))


def _finite(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if not np.isfinite(array).all():
        rows = array.shape[0]
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(rows, -1)).all(axis=1))[0])
        raise RequestRejected(f"row {bad} holds NaN or an infinity", status=422)
    return np.ascontiguousarray(array)


def to_batch(
    inputs: object, *, input_shape: tuple[int, ...], limits: Limits
) -> npt.NDArray[np.float32]:
    """``inputs`` (rows, flat or shaped) as a finite float32 batch of ``input_shape``."""
    if not isinstance(inputs, list) or not inputs:
        raise RequestRejected('"inputs" must be a non-empty list of rows', status=400)
    try:
        with np.errstate(over="ignore"):  # too big for float32 becomes inf: refused below
            array = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        raise RequestRejected(
            '"inputs" must hold numbers only, in rows of equal length', status=422
        ) from None
    features = math.prod(input_shape)
    if array.ndim == len(input_shape) and array.shape == input_shape:
        array = array[np.newaxis]  # one example, shaped
    elif array.ndim == 1 and array.size == features:
        array = array[np.newaxis]  # one example, flat
    rows = array.shape[0]
    if rows > limits.max_rows:
        raise RequestRejected(
            f"{rows} rows in one request; at most {limits.max_rows} are accepted", status=413
        )
    if array.shape[1:] != input_shape:
        if array.ndim != 2 or array.shape[1] != features:
            raise RequestRejected(
                f"rows of shape {list(array.shape[1:])} do not fit the model's input "
                f"{list(input_shape)} ({features} numbers per row)",
                status=422,
            )
        array = array.reshape((rows, *input_shape))
    return _finite(array)


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ROWS",
    "RAW_FLOAT32",
    "Limits",
    "parse_inputs",
    "parse_raw",
    "to_batch",
]
