"""MLflow hooks against a real (local SQLite) MLflow store, with clients on an in-process grid.

The same hooks against a real ``mlflow server`` over HTTP, driven by Flower's Simulation
Engine, are covered in tests/integration.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeGrid, client_handlers, server_identity

from federator import FederationFailed, FederationInterrupted, TrackingError
from federator.client.weights import load_safetensors
from federator.server.federation.runner import run_federation
from federator.server.plan import FederationPlan, build_plan
from federator.server.progress import LogProgress


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _plan(raw: dict[str, Any], **gate: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    raw["federation"]["rounds"] = 3
    raw["training"] = {"lr": 0.1, "momentum": 0.9, "epochs": 2}
    raw["gate"] = {"threshold": 0.5, "max_regression": 0.0, **gate}
    return build_plan(raw, source="test")


def _client(plan: FederationPlan) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=plan.tracking.uri, registry_uri=plan.tracking.uri)


def test_every_round_becomes_a_tagged_version(raw_config: dict[str, Any]) -> None:
    plan = _plan(raw_config)
    lines: list[str] = []
    summary = run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lines.append))
    client = _client(plan)
    name = plan.tracking.registered_model
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    assert [v.tags["federator.round"] for v in versions] == ["1", "2", "3"]
    assert summary.versions == {1: "1", 2: "2", 3: "3"}

    # Lineage: each version's parent is the previous one; all share the run and config hash.
    assert [v.tags["federator.parent_version"] for v in versions] == ["none", "1", "2"]
    for v, outcome in zip(versions, summary.outcomes, strict=True):
        assert v.run_id == summary.run_id == v.tags["federator.run_id"]
        assert v.tags["federator.config_hash"] == plan.config_hash
        assert v.tags["federator.strategy"] == "fedavg"
        assert v.tags["federator.code_version"].startswith("0.1.0")
        examples = json.loads(v.tags["federator.participant_examples"])
        assert examples == {c.pseudonym: c.num_examples for c in outcome.train_clients}
        assert v.tags["federator.num_examples"] == str(sum(examples.values()))
        assert outcome.decision is not None
        assert v.tags["federator.gate.decision"] == outcome.decision.verdict.value
        assert v.tags["federator.gate.reasons"] == "; ".join(outcome.decision.reasons)

    # Aliases: challenger is the newest; champion is the last promoted.
    model = client.get_registered_model(name)
    promoted = [o.round for o in summary.outcomes if o.decision and o.decision.promoted]
    assert model.aliases["challenger"] == 3
    assert model.aliases["champion"] == promoted[-1]
    assert summary.champion_version == str(promoted[-1])

    # Metrics per round, per client (pseudonymous), and the initial evaluation at step 0.
    run = client.get_run(summary.run_id)
    history = client.get_metric_history(summary.run_id, "val/accuracy")
    assert [m.step for m in history] == [0, 1, 2, 3]
    outcome = summary.outcomes[-1]
    assert outcome.server_eval is not None
    assert history[-1].value == pytest.approx(outcome.server_eval.accuracy)
    for key in (
        "round/participants",
        "round/wall_time_s",
        "train/loss",
        "clients/accuracy",
        "gate/promoted",
    ):
        assert key in run.data.metrics, key
    for c in outcome.train_clients:
        assert f"client/{c.pseudonym}/val_accuracy" in run.data.metrics
    assert run.data.params["federation.rounds"] == "3"
    assert run.info.status == "FINISHED"

    # Artifacts: weights as safetensors equal to the round's global model; plots; summary.
    src = Path(versions[-1].source.removeprefix("file://"))
    weights = load_safetensors(src / "weights.safetensors")
    assert outcome.arrays is not None
    for key, arr in outcome.arrays.items():
        np.testing.assert_array_equal(weights[key].numpy(), arr.numpy())
    lineage = json.loads((src / "lineage.json").read_text())
    assert lineage["parent_version"] == "2"
    plots = {a.path for a in client.list_artifacts(summary.run_id, "plots")}
    assert plots == {"plots/accuracy.png", "plots/client_accuracy.png"}
    local = client.download_artifacts(
        summary.run_id, "federation/rounds.json", str(src.parent.parent.parent / "dl")
    )
    rounds = json.loads(Path(local).read_text())["rounds"]
    assert [r["version"] for r in rounds] == ["1", "2", "3"]
    assert rounds[0]["gate"]["decision"] == summary.outcomes[0].decision.verdict.value  # type: ignore[union-attr]
    assert any("round 3:" in line for line in lines)


def test_champion_model_loads_with_mlflow_pytorch(raw_config: dict[str, Any]) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    plan = _plan(raw_config)
    run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None))
    mlflow.set_tracking_uri(plan.tracking.uri)
    mlflow.set_registry_uri(plan.tracking.uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/{plan.tracking.registered_model}@champion")
        assert model(torch.zeros(5, 64)).shape == (5, 10)  # batch size is not frozen
    finally:
        mlflow.set_tracking_uri("")


def test_unreachable_tracking_server_starts_nothing(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["tracking"]["uri"] = "http://127.0.0.1:9"  # discard port: nothing listens
    plan = build_plan(raw, source="test")
    grid = FakeGrid(client_handlers(4))
    with pytest.raises(TrackingError, match="cannot reach MLflow at http://127.0.0.1:9"):
        run_federation(grid, plan, display=LogProgress(lambda _: None))
    assert grid.sent == []  # no client was asked to do anything


def test_failed_federation_still_records_its_rounds(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["strategy"] = {"min_replies": 4, "round_timeout": 0.3}
    raw["federation"]["rounds"] = 4
    plan = build_plan(raw, source="test")
    handlers = client_handlers(4)
    first = next(iter(handlers))
    handlers[first] = lambda m: (
        None if m.metadata.message_type == "train" else client_handlers(4)[first](m)
    )
    with pytest.raises(FederationFailed):
        run_federation(FakeGrid(handlers), plan, display=LogProgress(lambda _: None))
    client = _client(plan)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert len(client.get_metric_history(runs[0].info.run_id, "round/skipped")) == 3
    assert client.search_model_versions("name = 'unit'") == []  # nothing half-registered


def test_mlflow_write_failure_stops_the_federation(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    plan = _plan(raw_config)

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError("artifact store is read-only")

    monkeypatch.setattr(MlflowClient, "log_artifacts", broken)
    with pytest.raises(TrackingError, match="artifact store is read-only"):
        run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None))


def test_interrupted_federation_keeps_completed_rounds(raw_config: dict[str, Any]) -> None:
    import threading

    plan = _plan(raw_config)
    cancel = threading.Event()

    class InterruptAfterFirstRound(LogProgress):
        def on_round(self, outcome: Any) -> None:
            cancel.set()  # as Ctrl-C in `federator simulate` does

    with pytest.raises(FederationInterrupted):
        run_federation(
            FakeGrid(client_handlers(4)),
            plan,
            display=InterruptAfterFirstRound(lambda _: None),
            cancel=cancel,
        )
    client = _client(plan)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.status == "KILLED"
    versions = client.search_model_versions("name = 'unit'")
    assert [v.tags["federator.round"] for v in versions] == ["1"]
