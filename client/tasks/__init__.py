"""Learning tasks: the protocol, the PyTorch classification implementation, the built-ins,
and `resolve_task`, which turns a config's task name into a checked task object."""

from __future__ import annotations

import importlib

from federator import TaskError
from federator.client.tasks.builtin import DIGITS_MLP, MNIST_CNN, MNIST_SCATTER
from federator.client.tasks.classification import ClassificationTask
from federator.client.tasks.protocol import Evaluation, Optimizer, Task, TrainSettings
from federator.strategies.registry import Registry

TASKS: Registry[Task] = Registry("task")
TASKS.register(MNIST_CNN.name, MNIST_CNN)
TASKS.register(MNIST_SCATTER.name, MNIST_SCATTER)
TASKS.register(DIGITS_MLP.name, DIGITS_MLP)


def resolve_task(ref: str) -> Task:
    """A built-in task by name, or a user's ``"package.module:object"``.

    The object may be a task or a zero-argument callable returning one. Anything else raises
    `TaskError` saying what is missing.
    """
    if ref in TASKS:
        return TASKS.get(ref)
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise TaskError(
            f"task {ref!r} is neither a built-in ({', '.join(TASKS)}) nor a "
            "'package.module:object' reference"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TaskError(f"task {ref!r}: cannot import {module_name!r} ({err})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise TaskError(f"task {ref!r}: module {module_name!r} has no {attr!r}")
    if not isinstance(obj, Task) and callable(obj):
        obj = obj()
    if not isinstance(obj, Task):
        missing = [
            m
            for m in (
                "name",
                "dataset",
                "input_shape",
                "supports_local_dp",
                "build_model",
                "train",
                "evaluate",
            )
            if not hasattr(obj, m)
        ]
        raise TaskError(
            f"task {ref!r} does not follow the task protocol; missing: {', '.join(missing)}"
        )
    return obj


__all__ = [
    "DIGITS_MLP",
    "MNIST_CNN",
    "MNIST_SCATTER",
    "TASKS",
    "ClassificationTask",
    "Evaluation",
    "Optimizer",
    "Task",
    "TrainSettings",
    "resolve_task",
]
