"""The client's side of local DP: turn the coordinator's plan into this round's DP-SGD
settings, check the node's own policy and record the spend before anything trains."""

from __future__ import annotations

from dataclasses import replace

import torch

from federator import TaskError, UpdateRejected
from federator.client.instructions import Instructions
from federator.client.tasks import Task, TrainSettings
from federator.client.wire import MetricName
from federator.privacy.dpsgd import DpSgd, check_model
from federator.privacy.ledger import dataset_fingerprint
from federator.privacy.policy import NodePrivacyPolicy, Spend, authorize, refuse_non_private
from federator.simulations.datasets import ArrayData

DP_STEPS = "dp-steps"


def private_settings(
    instr: Instructions,
    settings: TrainSettings,
    *,
    task: Task,
    model: torch.nn.Module,
    data: ArrayData,
    policy: NodePrivacyPolicy,
    server_round: int,
    noise_seed: int | None,
) -> tuple[TrainSettings, Spend | None]:
    """This round's settings with DP-SGD filled in, and the spend already recorded.

    Without local DP in the plan: the settings unchanged, unless the node's policy demands
    DP (`PolicyRefused`). With it: `PrivacyBudgetExhausted` when the node's budget or the
    run's plan would be exceeded — in which case nothing is recorded and nothing trains.
    """
    if instr.local_dp is None:
        refuse_non_private(policy)
        return settings, None
    if not task.supports_local_dp:
        raise TaskError(f"task {task.name!r} does not support local DP-SGD")
    check_model(model)
    target = instr.local_dp
    charge = target.round_charge(
        num_examples=len(data), batch_size=settings.batch_size, epochs=settings.epochs
    )
    spend = authorize(
        policy,
        target=target,
        charge=charge,
        dataset=dataset_fingerprint(data.x, data.y),
        federation=instr.federation,
        run=instr.run or instr.federation,
        round=server_round,
    )
    dp = DpSgd(
        noise_multiplier=charge.noise_multiplier,
        max_grad_norm=target.max_grad_norm,
        noise_seed=noise_seed,
    )
    return replace(settings, dp=dp), spend


def dp_metrics(spend: Spend | None, metrics: dict[str, float], *, delta: float) -> dict[str, float]:
    """The DP entries of the train reply; checks the task took no more steps than recorded."""
    if spend is None:
        return {}
    steps = metrics.get(DP_STEPS)
    if steps is None or int(steps) > spend.charge.steps:
        raise UpdateRejected(
            f"the task took {steps} DP-SGD steps but {spend.charge.steps} were accounted; "
            "the update is withheld"
        )
    return {
        MetricName.DP_EPSILON: spend.run_epsilon,
        "dp-epsilon-total": spend.total_after,
        "dp-delta": delta,
        "dp-noise-multiplier": spend.charge.noise_multiplier,
    }
