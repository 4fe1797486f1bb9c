"""Data checks run before a federation starts: does the data exist and fit the task?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federator import DataError
from federator.server.plan import FederationPlan
from federator.simulations.datasets import load_dataset
from federator.simulations.partition import compute_split, partition_sizes


@dataclass(frozen=True)
class DataReport:
    """What the simulated split looks like."""

    dataset: str
    examples: int
    example_shape: tuple[int, ...]
    classes: int
    holdout: int
    client_sizes: list[tuple[int, int]]


def check_data(plan: FederationPlan) -> DataReport:
    """Load the dataset and compute the split; `DataError` if it does not fit the plan."""
    task = plan.task()
    data = load_dataset(plan.data.dataset)
    if data.example_shape != tuple(task.input_shape):
        raise DataError(
            f"task {plan.task_ref!r} expects examples of shape "
            f"{tuple(task.input_shape)}, but dataset {plan.data.dataset!r} has "
            f"{data.example_shape}"
        )
    split = compute_split(plan.data)
    sizes = partition_sizes(plan.data)
    tiny = [i for i, (train, _) in enumerate(sizes) if train < 1]
    if tiny:
        raise DataError(f"clients {tiny} get no training examples; use fewer clients")
    return DataReport(
        dataset=plan.data.dataset,
        examples=len(data),
        example_shape=data.example_shape,
        classes=len(np.unique(data.y)),
        holdout=len(split.holdout),
        client_sizes=sizes,
    )
