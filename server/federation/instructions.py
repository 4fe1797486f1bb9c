"""What the coordinator gives every client: the round-0 model and the instructions each
message carries — and the coordinator's own evaluation of a global model on its hold-out."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from federator.client.instructions import Instructions, TrainingInstructions
from federator.client.tasks import Evaluation, Task
from federator.client.weights import load_arrays, model_arrays
from federator.privacy.central import ClippingSide
from federator.server.plan import FederationPlan
from federator.simulations.datasets import ArrayData


class ServerEvaluator:
    """Evaluates global models on the coordinator's held-out data (never seen by clients)."""

    def __init__(self, task: Task, holdout: ArrayData) -> None:
        self._task = task
        self._holdout = holdout
        self._model = task.build_model()

    def __call__(self, arrays: ArrayRecord) -> Evaluation:
        load_arrays(self._model, arrays)
        return self._task.evaluate(self._model, self._holdout)

    def example_input(self) -> object:
        """Two held-out examples: the input example MLflow stores with each model."""
        return self._holdout.x[:2]


def instructions_for(plan: FederationPlan, *, run_id: str = "") -> Instructions:
    """The instructions every client receives for this plan (``run_id``: the MLflow run,
    which names the run in each node's privacy ledger)."""
    t, local, central = plan.training, plan.privacy.local, plan.privacy.central
    return Instructions(
        federation=plan.name,
        run=run_id,
        strategy=plan.strategy.name,
        secagg=plan.privacy.secagg is not None,
        central_clipping=central.clipping
        if central is not None and central.side is ClippingSide.CLIENT
        else None,
        local_dp=local,
        task=plan.task_ref,
        task_bundle=plan.task_bundle.digest if plan.task_bundle else None,
        data=plan.data,
        # The plan's training settings less FedProx's μ (it travels as Flower's proximal-mu).
        training=TrainingInstructions(
            **{name: getattr(t, name) for name in TrainingInstructions.model_fields}
        ),
    )


def initial_arrays(task: Task, seed: int) -> ArrayRecord:
    """The round-0 global model: the task's model initialised from the federation seed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_arrays(task.build_model())


__all__ = ["ServerEvaluator", "initial_arrays", "instructions_for"]
