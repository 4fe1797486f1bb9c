"""A partner node's own data, read from its disk (deployment; simulation uses partitions).

Three layouts, chosen by what the path is:

* ``*.npz`` — arrays ``x`` (examples on the first axis) and ``y`` (integer labels); optional
  ``x_val`` / ``y_val`` for a fixed validation split.
* ``*.csv`` — a header row; the column named ``label`` (else the last column) holds integer
  labels, every other column is a numeric feature.
* a folder of images — one sub-folder per class (sorted names → labels 0, 1, …), images read
  with Pillow as grayscale (``L``) when the task expects one channel or a flat vector, else RGB,
  scaled to [0, 1].

The data is checked against the task's ``input_shape`` before anything trains, and the node's
validation split is drawn with the node's own seed: nothing about it comes from the coordinator
except the validation fraction.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from federator import DataError
from federator.simulations.datasets import ArrayData
from federator.simulations.partition import ClientData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


def _npz(path: Path) -> tuple[ArrayData, ArrayData | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; it has {sorted(arrays)}")
    val = None
    if "x_val" in arrays or "y_val" in arrays:
        val = _array_data(arrays.get("x_val"), arrays.get("y_val"), source=f"{path} (x_val/y_val)")
    return _array_data(arrays["x"], arrays["y"], source=str(path)), val


def _array_data(x: object, y: object, *, source: str) -> ArrayData:
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{source}: both features and labels are needed")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{source}: features must be numeric and labels integers (got {x.dtype} and {y.dtype})"
        )
    if len(y) and y.min() < 0:
        raise DataError(f"{source}: labels must be ≥ 0")
    return ArrayData(x.astype(np.float32), y.astype(np.int64))


def _csv(path: Path) -> ArrayData:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one example")
    header, body = rows[0], rows[1:]
    label = header.index("label") if "label" in header else len(header) - 1
    try:
        table = np.array([[float(v) for v in row] for row in body], dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{path}: every value must be a number ({err})") from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise DataError(f"{path}: every row must have {len(header)} values")
    y = table[:, label]
    if not np.all(y == np.round(y)):
        raise DataError(f"{path}: column {header[label]!r} must hold whole-number labels")
    return _array_data(np.delete(table, label, axis=1), y.astype(np.int64), source=str(path))


def _images(folder: Path, input_shape: tuple[int, ...] | None) -> ArrayData:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: expected one sub-folder per class, found none")
    gray = input_shape is None or len(input_shape) == 1 or input_shape[0] == 1
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted(cls.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    pixels = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32)
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"{file}: not a readable image ({err})") from None
            xs.append(pixels / 255.0 if pixels.ndim == 2 else pixels.transpose(2, 0, 1) / 255.0)
            ys.append(label)
    if not xs:
        raise DataError(f"{folder}: no images in its class folders")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(f"{folder}: images differ in size ({sorted(shapes)[:3]}…)")
    x = np.stack(xs)
    if input_shape is not None and len(input_shape) == 1:
        x = x.reshape(len(x), -1)
    elif input_shape is None or (len(input_shape) == 3 and x.ndim == 3):
        x = x[:, None] if x.ndim == 3 else x
    return ArrayData(x.astype(np.float32), np.asarray(ys, dtype=np.int64))


def _split(data: ArrayData, fraction: float, seed: int) -> ClientData:
    rows = np.random.default_rng(seed).permutation(len(data)).astype(np.int64)
    k = round(len(rows) * fraction)
    if fraction > 0 and len(rows) >= 2:
        k = min(max(k, 1), len(rows) - 1)
    return ClientData(train=data.subset(rows[k:]), val=data.subset(rows[:k]))


def _seed_of(path: Path) -> int:
    return int.from_bytes(hashlib.sha256(str(path.resolve()).encode()).digest()[:4], "big")


def load_node_data(
    path: Path,
    *,
    input_shape: tuple[int, ...] | None,
    val_fraction: float,
    seed: int | None = None,
) -> ClientData:
    """The node's train/validation data at ``path``; `DataError` naming what is wrong.

    ``seed`` fixes the validation split (default: derived from the path, so it is stable
    across rounds and restarts); ``input_shape`` None skips the shape check (a node that does
    not know its task yet)."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    val: ArrayData | None = None
    if path.is_dir():
        data = _images(path, input_shape)
    elif path.suffix.lower() == ".npz":
        data, val = _npz(path)
    elif path.suffix.lower() == ".csv":
        data = _csv(path)
    else:
        raise DataError(f"data path {path}: use a .npz file, a .csv file or a folder of images")
    for part, what in ((data, "examples"), (val, "validation examples")):
        if input_shape is None or part is None:
            continue
        if part.example_shape != tuple(input_shape):
            raise DataError(
                f"data path {path}: {what} have shape {part.example_shape}, but the task "
                f"expects {tuple(input_shape)}"
            )
    if len(data) == 0:
        raise DataError(f"data path {path} holds no examples")
    if val is not None:
        return ClientData(train=data, val=val)
    return _split(data, val_fraction, _seed_of(path) if seed is None else seed)


__all__ = ["IMAGE_SUFFIXES", "load_node_data"]
