"""A user task (loaded as ``poison_task:task``) whose clients holding label 0 send NaN weights.

It stands for a partner with broken data or a broken trainer: the coordinator must reject
those updates with a reason and finish every round with the others.
"""

from __future__ import annotations

import torch

from federator.client.tasks import DIGITS_MLP, Evaluation, TrainSettings
from federator.simulations.datasets import ArrayData


class PoisonTask:
    name = "poison-digits"
    dataset = "digits"
    input_shape = (64,)
    supports_local_dp = False

    def build_model(self) -> torch.nn.Module:
        return DIGITS_MLP.build_model()

    def train(
        self, model: torch.nn.Module, data: ArrayData, settings: TrainSettings
    ) -> dict[str, float]:
        metrics = DIGITS_MLP.train(model, data, settings)
        if (data.y == 0).any():
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return metrics

    def evaluate(self, model: torch.nn.Module, data: ArrayData) -> Evaluation:
        return DIGITS_MLP.evaluate(model, data)


task = PoisonTask()
