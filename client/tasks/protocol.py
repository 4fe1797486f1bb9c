"""The task protocol: what Federator needs from a learning task.

A task says how to build the model, which data it learns from, how to train one round
locally and how to evaluate. Built-in tasks implement it with `ClassificationTask`; a user's
task is any object with these members, named in the config as ``"package.module:object"``
(see docs/researcher.md for a complete example).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import torch

from federator.privacy.dpsgd import DpSgd
from federator.simulations.datasets import ArrayData


class Optimizer(StrEnum):
    """Local optimisers a client can use."""

    SGD = "sgd"
    ADAM = "adam"


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How a client trains in one round (sent by the coordinator every round).

    ``proximal_mu`` > 0 adds FedProx's proximal term (mu/2)·||w − w_global||² to the loss.
    ``seed`` makes shuffling and any randomness in the model reproducible.
    ``dp``: train with DP-SGD (`federator.privacy.make_private`); only tasks whose
    ``supports_local_dp`` is true are sent it, and they must report the noisy steps taken
    as the ``dp-steps`` metric.
    """

    epochs: int
    batch_size: int
    optimizer: Optimizer
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0
    dp: DpSgd | None = None


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of a model on some examples."""

    loss: float
    accuracy: float
    num_examples: int


@runtime_checkable
class Task(Protocol):
    """A learning task Federator can federate.

    ``name``: shown in plans and tags. ``dataset``: the dataset used when a config does not
    name one (a built-in name or ``module:function``). ``input_shape``: the shape of one
    example, checked against the data before anything trains.
    """

    @property
    def name(self) -> str: ...

    @property
    def dataset(self) -> str: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def supports_local_dp(self) -> bool:
        """Whether ``train`` honours ``settings.dp`` (DP-SGD) and reports ``dp-steps``; a
        federation with ``[privacy.local]`` refuses a task that does not."""

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (same architecture on server and every client)."""

    def train(
        self, model: torch.nn.Module, data: ArrayData, settings: TrainSettings
    ) -> dict[str, float]:
        """Train ``model`` in place for one round on ``data``; return scalar metrics."""

    def evaluate(self, model: torch.nn.Module, data: ArrayData) -> Evaluation:
        """Loss and accuracy of ``model`` on ``data`` (no gradient)."""
