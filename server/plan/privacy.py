"""The privacy part of a plan: the ``[privacy]`` section, validated against the rest.

What only the whole config can tell: FedProx's proximal term is not per-example (no
DP-SGD), a model with BatchNorm cannot be trained with DP-SGD, Flower's accountant for
central DP covers fixed clipping with plain FedAvg only, and secure aggregation hides the
individual updates that robust aggregators and server-side clipping need.
"""

from __future__ import annotations

from dataclasses import dataclass

from federator.client.tasks import Task
from federator.privacy.central import CentralClipping, CentralDpSettings, ClippingSide
from federator.privacy.dpsgd import model_problems
from federator.privacy.policy import LocalDpTarget
from federator.server.plan.config import (
    CentralDpSection,
    FederationConfig,
    SecAggSection,
)
from federator.strategies import StrategySpec


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """Which protections a federation runs with (all None: none)."""

    local: LocalDpTarget | None = None
    central: CentralDpSettings | None = None
    # SecAgg+ as planned is the config's own frozen `[privacy.secagg]` section.
    secagg: SecAggSection | None = None


def _central(c: CentralDpSection, clients: int, sampled: int) -> CentralDpSettings:
    return CentralDpSettings(**c.model_dump(), clients=clients, sampled_per_round=sampled)


def privacy_problems(
    cfg: FederationConfig, spec: StrategySpec | None, task: Task | None, *, train_nodes: int
) -> list[str]:
    """Contradictions between ``[privacy]`` and the rest of the config."""
    p, problems = cfg.privacy, []
    if p.local is not None:
        problems += _local_problems(spec, task)
    if p.central is not None:
        problems += _central_problems(p.central, spec)
    if p.secagg is not None:
        problems += _secagg_problems(cfg, spec, train_nodes=train_nodes)
    return problems


def _local_problems(spec: StrategySpec | None, task: Task | None) -> list[str]:
    problems: list[str] = []
    if spec is not None and not spec.per_example_loss:
        problems.append(
            "privacy.local: FedProx's proximal term is not a per-example loss, so DP-SGD "
            "cannot bound it; use fedavg (or another strategy) with local DP"
        )
    if task is not None:
        if not task.supports_local_dp:
            problems.append(f"privacy.local: task {task.name!r} does not support DP-SGD")
        else:
            problems += [f"privacy.local: {m}" for m in model_problems(task.build_model())]
    return problems


def _central_problems(c: CentralDpSection, spec: StrategySpec | None) -> list[str]:
    problems: list[str] = []
    if spec is not None and spec.needs_individual_updates:
        problems.append(
            f"privacy.central: the noise is calibrated for a mean of clipped updates; "
            f"strategy {spec.name!r} does not average (use fedavg or another averaging one)"
        )
    if c.max_epsilon is not None and c.delta is None:
        problems.append("privacy.central.delta: required when max_epsilon is set")
    if c.delta is not None:
        if c.clipping is not CentralClipping.FIXED:
            problems.append(
                "privacy.central: Flower's accountant covers fixed clipping only; "
                "remove delta/max_epsilon or use clipping = 'fixed'"
            )
        if spec is not None and not spec.plain_fedavg:
            problems.append(
                f"privacy.central: Flower's accountant needs strategy 'fedavg', not {spec.name!r}"
            )
        if c.noise_multiplier <= 0:
            problems.append("privacy.central.noise_multiplier: must be > 0 when accounted")
    return problems


def _secagg_problems(
    cfg: FederationConfig, spec: StrategySpec | None, *, train_nodes: int
) -> list[str]:
    p, problems = cfg.privacy, []
    s = p.secagg
    assert s is not None
    if spec is not None and spec.needs_individual_updates:
        problems.append(
            f"privacy.secagg: strategy {spec.name!r} must see each client's update, "
            "which secure aggregation hides; use fedavg"
        )
    elif spec is not None and not spec.plain_fedavg:
        problems.append(
            f"privacy.secagg: SecAgg+ runs with FedAvg only in Flower 1.42 (got {spec.name!r})"
        )
    if p.central is not None and p.central.side is ClippingSide.SERVER:
        problems.append(
            "privacy.secagg: server-side clipping needs each client's update; "
            "use privacy.central.side = 'client' with secure aggregation"
        )
    if p.central is not None:
        problems.append(
            "privacy.secagg: not yet combinable with privacy.central — the SecAgg+ round "
            "replaces the strategy's aggregation, where Flower's wrapper adds the noise"
        )
    if s.reconstruction_threshold >= s.num_shares:
        problems.append(
            f"privacy.secagg.reconstruction_threshold: {s.reconstruction_threshold} must be "
            f"less than num_shares ({s.num_shares})"
        )
    if train_nodes * s.quantization_range >= 2**32:
        problems.append(
            f"privacy.secagg.quantization_range: {train_nodes} clients × "
            f"{s.quantization_range} would overflow SecAgg+'s 32-bit sum; lower it"
        )
    if s.num_shares > train_nodes:
        problems.append(
            f"privacy.secagg.num_shares: {s.num_shares} is more than the {train_nodes} "
            "nodes a round samples for training"
        )
    return problems


def privacy_plan(cfg: FederationConfig, *, train_nodes: int) -> PrivacyPlan:
    """The validated privacy plan (call after `privacy_problems` found nothing)."""
    p = cfg.privacy
    local = None
    if p.local is not None:
        local = LocalDpTarget(**p.local.model_dump(), rounds=cfg.federation.rounds)
    return PrivacyPlan(
        local=local,
        central=_central(p.central, cfg.data.clients, train_nodes) if p.central else None,
        secagg=p.secagg,
    )


def describe_privacy(
    plan: PrivacyPlan, *, typical_examples: int, batch_size: int, epochs: int
) -> list[str]:
    """Human-readable lines for ``federator validate`` (σ shown for a client with
    ``typical_examples`` training examples; each client computes its own)."""
    lines: list[str] = []
    if (loc := plan.local) is not None:
        charge = loc.round_charge(
            num_examples=typical_examples, batch_size=batch_size, epochs=epochs
        )
        lines.append(
            f"local DP-SGD: ε ≤ {loc.target_epsilon} at δ = {loc.delta:g} per client over "
            f"{loc.rounds} round(s) ({loc.accountant.value} accountant), clip "
            f"{loc.max_grad_norm}; a client with {typical_examples} examples trains with "
            f"σ = {charge.noise_multiplier:.3f}, sampling rate {charge.sample_rate:.4f}, "
            f"{charge.steps} steps per round; each node's own budget still applies"
        )
    if (c := plan.central) is not None:
        how = f"{c.clipping.value} clipping at {c.clipping_norm} on the {c.side.value} side"
        budget = (
            f"accounted at δ = {c.delta:g}, stops before ε > {c.max_epsilon}"
            if c.delta is not None and c.max_epsilon is not None
            else f"accounted at δ = {c.delta:g}, no limit"
            if c.delta is not None
            else "not accounted (set delta to track ε)"
        )
        lines.append(
            f"central DP: {how}, noise σ = {c.noise_multiplier} over "
            f"{c.sampled_per_round} equally weighted updates; {budget}"
        )
    if (s := plan.secagg) is not None:
        lines.append(
            f"SecAgg+: {s.num_shares} shares, any {s.reconstruction_threshold} reconstruct; "
            "the coordinator sees only the weighted mean of the surviving updates"
        )
    return lines or ["none: updates leave the nodes as trained (see docs/privacy.md)"]
