"""Split one dataset into a server hold-out and one partition per simulated client.

The split is a pure function of the `SimulationData` spec (dataset, partitioner, seed, ...),
so the server and every client compute the same split independently and a rerun with the same
seed gives the same partitions. Partitions come from flwr-datasets' partitioners, run over an
in-memory ``datasets.Dataset`` of labels and row indices (nothing is fetched from a hub).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from federator import DataError
from federator.simulations.datasets import ArrayData, load_dataset

IndexArray = npt.NDArray[np.int64]

# The data split's constraints, declared once: the config's `[data]` section, the plan and the
# instructions on the wire all validate with these (pydantic at each edge).
Clients = Annotated[int, Field(ge=1, le=100_000)]
Alpha = Annotated[float, Field(gt=0)]
MinPartitionSize = Annotated[int, Field(ge=0)]
ShardsPerClient = Annotated[int, Field(ge=1)]
ServerHoldout = Annotated[float, Field(gt=0, lt=1)]
ValFraction = Annotated[float, Field(ge=0, lt=1)]


class Partitioner(StrEnum):
    """How client partitions are drawn (flwr-datasets partitioners)."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"


@dataclass(frozen=True, kw_only=True)
class SimulationData:
    """Everything that determines the simulated data split — in the plan and, unchanged, in
    every client's instructions (pydantic validates it there, unknown keys refused)."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    dataset: str
    clients: Clients
    partitioner: Partitioner
    seed: int
    alpha: Alpha = 0.5
    min_partition_size: MinPartitionSize = 10
    shards_per_client: ShardsPerClient = 2
    server_holdout: ServerHoldout = 0.2
    client_val_fraction: ValFraction = 0.2


def partition_label(partition_id: int) -> str:
    """The label of simulated client ``partition_id`` (``partition-3``): the name a simulated
    node goes by, as a deployed node goes by its configured ``name``."""
    return f"partition-{partition_id}"


@dataclass(frozen=True)
class ClientData:
    """One client's local data: what it trains on and what it validates on."""

    train: ArrayData
    val: ArrayData


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices into the dataset: the server's hold-out and each client's partition."""

    holdout: IndexArray
    partitions: tuple[IndexArray, ...]


def _holdout_split(
    y: npt.NDArray[np.int64], fraction: float, seed: int
) -> tuple[IndexArray, IndexArray]:
    """Stratified (per-class) split of row indices into (rest, holdout)."""
    rng = np.random.default_rng(seed)
    holdout: list[IndexArray] = []
    rest: list[IndexArray] = []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        k = round(len(rows) * fraction)
        holdout.append(rows[:k])
        rest.append(rows[k:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(holdout))


def _flwr_partitions(spec: SimulationData, labels: npt.NDArray[np.int64]) -> list[IndexArray]:
    # Imported here: `datasets` costs ~2 s to import and only the split needs it.
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        ShardPartitioner,
    )

    table = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    partitioner: IidPartitioner | DirichletPartitioner | ShardPartitioner
    if spec.partitioner is Partitioner.IID:
        partitioner = IidPartitioner(num_partitions=spec.clients)
    elif spec.partitioner is Partitioner.DIRICHLET:
        partitioner = DirichletPartitioner(
            num_partitions=spec.clients,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=spec.min_partition_size,
            seed=spec.seed,
        )
    else:
        partitioner = ShardPartitioner(
            num_partitions=spec.clients,
            partition_by="label",
            num_shards_per_partition=spec.shards_per_client,
            seed=spec.seed,
        )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            # pyarrow (used by ShardPartitioner's sort) warns about its own API change, and
            # DirichletPartitioner warns on every redraw before it gives up with ValueError.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            return [
                np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
                for i in range(spec.clients)
            ]
    except ValueError as err:
        raise DataError(
            f"the {spec.partitioner.value} partitioner cannot split {len(labels)} examples "
            f"into {spec.clients} clients: {err}"
        ) from None


@lru_cache(maxsize=8)
def compute_split(spec: SimulationData) -> Split:
    """The split for ``spec`` (cached per process)."""
    data = load_dataset(spec.dataset)
    rest, holdout = _holdout_split(data.y, spec.server_holdout, spec.seed)
    if len(rest) < spec.clients:
        raise DataError(
            f"dataset {spec.dataset!r} leaves {len(rest)} examples after the "
            f"server hold-out: fewer than the {spec.clients} clients"
        )
    parts = _flwr_partitions(spec, data.y[rest])
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partitions {empty} are empty: use fewer clients or a larger alpha")
    return Split(holdout=holdout, partitions=tuple(rest[p] for p in parts))


def server_holdout(spec: SimulationData) -> ArrayData:
    """The server's held-out examples (never seen by a client), used by the validation gate."""
    return load_dataset(spec.dataset).subset(compute_split(spec).holdout)


def _train_val(rows: IndexArray, fraction: float, seed: int) -> tuple[IndexArray, IndexArray]:
    rows = np.random.default_rng(seed).permutation(rows)
    k = round(len(rows) * fraction)
    if fraction > 0 and len(rows) >= 2:
        k = min(max(k, 1), len(rows) - 1)
    return rows[k:], rows[:k]


def client_data(spec: SimulationData, partition_id: int) -> ClientData:
    """Client ``partition_id``'s train/validation data."""
    if not 0 <= partition_id < spec.clients:
        raise DataError(f"partition id {partition_id} is outside 0..{spec.clients - 1}")
    rows = compute_split(spec).partitions[partition_id]
    train, val = _train_val(rows, spec.client_val_fraction, spec.seed * 100_003 + partition_id)
    data = load_dataset(spec.dataset)
    return ClientData(train=data.subset(train), val=data.subset(val))


def partition_sizes(spec: SimulationData) -> list[tuple[int, int]]:
    """(train, validation) example counts per client, for plans and progress displays."""
    out = []
    for pid in range(spec.clients):
        rows = compute_split(spec).partitions[pid]
        train, val = _train_val(rows, spec.client_val_fraction, spec.seed * 100_003 + pid)
        out.append((len(train), len(val)))
    return out
