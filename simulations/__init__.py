"""Local simulation: bundled datasets, partitioning with flwr-datasets, and the runner that
drives Flower's Simulation Engine. Example configs live next to this file (``*.toml``)."""

from federator.simulations.datasets import DATASETS, ArrayData, load_dataset
from federator.simulations.partition import (
    Partitioner,
    SimulationData,
    client_data,
    server_holdout,
)
from federator.simulations.runner import SimulationResources, simulate

__all__ = [
    "DATASETS",
    "ArrayData",
    "Partitioner",
    "SimulationData",
    "SimulationResources",
    "client_data",
    "load_dataset",
    "server_holdout",
    "simulate",
]
