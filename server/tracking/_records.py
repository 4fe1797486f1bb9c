"""Rounds as plain data: the metrics MLflow gets, and a JSON record of each round.

Records go into ``federation/rounds.json`` and, through the `RoundJournal`, into every
checkpoint, so a resumed federation can still plot and summarise the rounds that ran before
the interruption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from federator.client.serving.report import ServingReport
from federator.client.tasks import Evaluation
from federator.client.wire import DeliveryStatus, MetricName
from federator.server.federation.events import (
    ClientRefusal,
    ClientResult,
    FederationStarted,
    RoundOutcome,
    RoundStatus,
)
from federator.server.federation.gate import Decision, Verdict
from federator.server.federation.monitoring import NodeServing, serving_metrics
from federator.server.plan import FederationPlan
from federator.server.releases import DeliveryReport

# The metric whose steps say which rounds' releases were pushed already.
RELEASE_VERSION = "release/version"

# A simulation's ``[attack]``: the run's tags (what the attack is, who the attackers are), the
# model version's tag (whose poisoned updates went into it) and the round's metrics.
ATTACK_TAG = "federator.attack"
ATTACKERS_TAG = "federator.attack.attackers"
ATTACKERS_IN_MODEL_TAG = "federator.attack.accepted"
ATTACKERS_METRIC = "attack/attackers"
ATTACKERS_ACCEPTED_METRIC = "attack/accepted"


def attack_tags(plan: FederationPlan) -> dict[str, str]:
    """The run's tags of its ``[attack]`` (none without one): the attack with its parameters,
    and the attackers' partition labels (simulation partitions: nothing private)."""
    if plan.attack is None:
        return {}
    return {
        ATTACK_TAG: plan.attack.describe(),
        ATTACKERS_TAG: json.dumps(list(plan.attack.labels)),
    }


def attack_version_tags(plan: FederationPlan, o: RoundOutcome) -> dict[str, str]:
    """A model version's tag naming the attackers whose updates passed screening into it."""
    if plan.attack is None:
        return {}
    return {ATTACKERS_IN_MODEL_TAG: json.dumps(list(o.attackers_accepted))}


class RoundJournal:
    """Every round's record so far and the last round's metrics (a checkpoint part,
    `Component.RECORDS`: a resume logs those metrics if the crash came before they were)."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._metrics: dict[str, float] = {}

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def add(self, record: dict[str, Any], *, metrics: Mapping[str, float]) -> None:
        self._records.append(record)
        self._metrics = dict(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.records, "metrics": self.metrics}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._records = [dict(r) for r in state["rounds"]]
        self._metrics = {str(k): float(v) for k, v in state["metrics"].items()}


def initial_metrics(event: FederationStarted) -> dict[str, float]:
    """The metrics at step 0: the initial model's server-side evaluation, the nodes."""
    return {
        "val/accuracy": event.initial_eval.accuracy,
        "val/loss": event.initial_eval.loss,
        "nodes/connected": len(event.nodes),
    }


def release_metrics(report: DeliveryReport) -> dict[str, float]:
    """``release/*``: how many nodes installed, refused or missed a release, and its version."""
    metrics: dict[str, float] = {f"release/{s.value}": report.count(s) for s in DeliveryStatus}
    metrics[RELEASE_VERSION] = report.version
    return metrics


def client_val_metric(pseudonym: str, key: str) -> str:
    """The MLflow metric of what one client reported evaluating a round's model."""
    return f"client/{pseudonym}/val_{key}"


def round_metrics(o: RoundOutcome) -> dict[str, float]:
    """The MLflow metrics of one round (step = round)."""
    m: dict[str, float] = {
        "round/sampled": o.sampled,
        "round/participants": o.participants,
        "round/refused": len(o.refusals),
        "round/wall_time_s": o.wall_time,
        "round/skipped": float(o.status is RoundStatus.SKIPPED),
    }
    if o.server_eval is not None:
        m["val/accuracy"] = o.server_eval.accuracy
        m["val/loss"] = o.server_eval.loss
    for k, v in o.train_metrics.items():
        m[f"train/{k.removeprefix('train-')}"] = v
    for k, v in o.eval_metrics.items():
        m[f"clients/{k}"] = v
    if o.decision is not None:
        m["gate/promoted"] = float(o.decision.promoted)
    if o.attackers:
        m[ATTACKERS_METRIC] = len(o.attackers)
        m[ATTACKERS_ACCEPTED_METRIC] = len(o.attackers_accepted)
    for k, v in o.privacy.items():
        m[f"privacy/{k}"] = v
    local = [
        c.metrics[MetricName.DP_EPSILON]
        for c in o.train_clients
        if MetricName.DP_EPSILON in c.metrics
    ]
    if local:
        m["privacy/local-epsilon-max"] = max(local)
    for c in o.train_clients:
        m[f"client/{c.pseudonym}/num_examples"] = c.num_examples
        for k, v in c.metrics.items():
            m[f"client/{c.pseudonym}/{k.replace('-', '_')}"] = v
    for c in o.eval_clients:
        for k, v in c.metrics.items():
            m[client_val_metric(c.pseudonym, k)] = v
    return m | serving_metrics(o.serving)


def _clients(clients: list[ClientResult]) -> list[dict[str, Any]]:
    return [
        {"client": c.pseudonym, "examples": c.num_examples, "metrics": dict(c.metrics)}
        for c in clients
    ]


def outcome_record(o: RoundOutcome, *, version: str | None) -> dict[str, Any]:
    """A JSON-ready record of a round (everything but the weights)."""
    return {
        "round": o.round,
        "status": o.status.value,
        "sampled": o.sampled,
        "participants": [c.pseudonym for c in o.train_clients],
        "train_clients": _clients(list(o.train_clients)),
        "eval_clients": _clients(list(o.eval_clients)),
        "refusals": [
            {"client": r.pseudonym, "phase": r.phase, "reason": r.reason} for r in o.refusals
        ],
        "serving": [{"client": n.pseudonym, **n.report.model_dump(mode="json")} for n in o.serving],
        "train_metrics": dict(o.train_metrics),
        "eval_metrics": dict(o.eval_metrics),
        "val": (
            {
                "accuracy": o.server_eval.accuracy,
                "loss": o.server_eval.loss,
                "examples": o.server_eval.num_examples,
            }
            if o.server_eval
            else None
        ),
        "gate": (
            {"decision": o.decision.verdict.value, "reasons": list(o.decision.reasons)}
            if o.decision
            else None
        ),
        "version": version,
        "skip_reason": o.skip_reason,
        "wall_time_s": o.wall_time,
        "privacy": dict(o.privacy),
        **(
            {"attackers": list(o.attackers), "attackers_accepted": list(o.attackers_accepted)}
            if o.attackers
            else {}
        ),
    }


def outcome_from_record(r: dict[str, Any]) -> RoundOutcome:
    """The round back from its record (without weights), for plots and summaries."""

    def clients(items: list[dict[str, Any]]) -> list[ClientResult]:
        return [
            ClientResult(
                pseudonym=c["client"], num_examples=int(c["examples"]), metrics=c["metrics"]
            )
            for c in items
        ]

    val, gate = r.get("val"), r.get("gate")
    return RoundOutcome(
        round=int(r["round"]),
        status=RoundStatus(r["status"]),
        arrays=None,
        sampled=int(r["sampled"]),
        train_clients=clients(r["train_clients"]),
        eval_clients=clients(r["eval_clients"]),
        refusals=[
            ClientRefusal(pseudonym=x["client"], phase=x["phase"], reason=x["reason"])
            for x in r["refusals"]
        ],
        train_metrics=r["train_metrics"],
        eval_metrics=r["eval_metrics"],
        server_eval=(
            Evaluation(
                loss=val["loss"], accuracy=val["accuracy"], num_examples=int(val.get("examples", 0))
            )
            if val
            else None
        ),
        decision=(Decision(Verdict(gate["decision"]), tuple(gate["reasons"])) if gate else None),
        wall_time=float(r["wall_time_s"]),
        skip_reason=r.get("skip_reason"),
        privacy=r.get("privacy", {}),
        serving=[
            NodeServing(
                x["client"],
                ServingReport.model_validate({k: v for k, v in x.items() if k != "client"}),
            )
            for x in r.get("serving", [])
        ],
        attackers=tuple(r.get("attackers", ())),
        attackers_accepted=tuple(r.get("attackers_accepted", ())),
    )
