"""Checks that need the whole config: contradictions between sections."""

from __future__ import annotations

from pydantic import BaseModel

from federator.client.tasks import Optimizer, Task
from federator.server.plan.config import FederationConfig, GateMetric
from federator.simulations.partition import Partitioner
from federator.strategies import StrategySpec


def sampled(available: int, fraction: float, minimum: int) -> int:
    """How many nodes Flower samples: ``max(int(available × fraction), minimum)``."""
    return max(int(available * fraction), minimum)


def cross_checks(
    cfg: FederationConfig, spec: StrategySpec | None, params: BaseModel | None, task: Task | None
) -> list[str]:
    problems: list[str] = []
    d, s, g, t = cfg.data, cfg.strategy, cfg.gate, cfg.training
    n = d.clients
    for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        value = getattr(s, key)
        if value is not None and value > n:
            problems.append(f"strategy.{key}: {value} is more than the {n} clients in data.clients")
    avail = s.min_available_nodes or n
    train_nodes = sampled(avail, s.fraction_train, s.min_train_nodes or min(2, n))
    if s.min_replies > train_nodes:
        problems.append(
            f"strategy.min_replies: {s.min_replies} is more than the "
            f"{train_nodes} nodes a round samples for training"
        )
    eval_nodes = (
        0
        if s.fraction_evaluate == 0
        else sampled(avail, s.fraction_evaluate, s.min_evaluate_nodes or min(2, n))
    )
    if eval_nodes > 0 and d.client_val_fraction == 0:
        problems.append(
            "data.client_val_fraction: is 0, so clients have nothing to evaluate "
            "on, but strategy.fraction_evaluate asks them to (set it above 0, or "
            "strategy.fraction_evaluate = 0)"
        )
    if g.max_client_spread is not None and eval_nodes < 2:
        problems.append(
            f"gate.max_client_spread: needs ≥ 2 client evaluations per round, but "
            f"a round asks {eval_nodes} (raise strategy.fraction_evaluate or remove "
            "the spread limit)"
        )
    if g.metric is GateMetric.ACCURACY and not 0 <= g.threshold <= 1:
        problems.append(
            f"gate.threshold: accuracy threshold must be within [0, 1], got {g.threshold}"
        )
    if t.optimizer is Optimizer.ADAM and "momentum" in t.model_fields_set:
        problems.append("training.momentum: applies to optimizer = 'sgd' only")
    by_partitioner = {
        "alpha": Partitioner.DIRICHLET,
        "min_partition_size": Partitioner.DIRICHLET,
        "shards_per_client": Partitioner.SHARDS,
    }
    for key, owner in by_partitioner.items():
        if key in d.model_fields_set and d.partitioner is not owner:
            problems.append(
                f"data.{key}: applies to partitioner = '{owner.value}' only, not "
                f"'{d.partitioner.value}'"
            )
    if spec is not None and params is not None:
        problems += [
            f"strategy.params: {p}" for p in spec.problems(params, train_nodes=train_nodes)
        ]
    if task is not None and d.dataset is None and not task.dataset:
        problems.append("data.dataset: task names no default dataset; set one")
    return problems
