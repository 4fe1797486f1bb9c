"""Crash-safe resume: checkpoints, exactly-once rounds, identical results after a restart."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeGrid, client_handlers, server_identity
from flwr.serverapp.strategy import FedAdam

from federator import ConfigError, FederationInterrupted, TrackingError
from federator.server.federation.checkpoint import (
    CHECKPOINT_TAG,
    Checkpoint,
    Checkpointer,
    Component,
    Taken,
    read_checkpoint,
    write_checkpoint,
)
from federator.server.federation.gate import Gate
from federator.server.federation.instructions import initial_arrays
from federator.server.federation.runner import run_federation
from federator.server.plan import FederationPlan, build_plan
from federator.server.progress import LogProgress
from federator.server.tracking import MlflowTracking
from federator.strategies import StrategyState


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _plan(raw: dict[str, Any], runs: Path, **training: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    raw["federation"]["rounds"] = 4
    raw["strategy"] = {"name": "fedadam", "params": {"eta": 0.01}}
    raw["training"] = {"lr": 0.1, "momentum": 0.9, **training}
    raw["gate"] = {"threshold": 0.3}
    raw["tracking"] = {"runs_dir": str(runs)}
    return build_plan(raw, source="test")


def _client(plan: FederationPlan) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=plan.tracking.uri, registry_uri=plan.tracking.uri)


class _StopAfter(LogProgress):
    """Interrupts the federation after a given round, as a crash or Ctrl-C would."""

    def __init__(self, cancel: threading.Event, after: int) -> None:
        super().__init__(lambda _: None)
        self._cancel, self._after = cancel, after

    def on_round(self, outcome: Any) -> None:
        if outcome.round == self._after:
            self._cancel.set()


def _interrupted_run(plan: FederationPlan, after: int) -> str:
    cancel = threading.Event()
    with pytest.raises(FederationInterrupted):
        run_federation(
            FakeGrid(client_handlers(4, id_seed=1)),
            plan,
            display=_StopAfter(cancel, after),
            cancel=cancel,
        )
    client = _client(plan)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    return str(run.info.run_id)


class _Loop:
    """Stands in for the round loop's part: a round, skips and a model's arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], skips: int = 0) -> None:
        self.arrays, self.skips = arrays, skips

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive_skips": self.skips, "arrays": dict(self.arrays)}

    def load_state_dict(self, state: Any) -> None:
        self.arrays, self.skips = dict(state["arrays"]), int(state["consecutive_skips"])


def _parts(
    checkpointer: Checkpointer, gate: Gate, strategy: FedAdam, loop: _Loop, lineage: Any
) -> None:
    checkpointer.register(Component.LOOP, loop)
    checkpointer.register(Component.GATE, gate)
    checkpointer.register(Component.STRATEGY, StrategyState(strategy, ("m_t", "v_t")))
    checkpointer.register(Component.LINEAGE, lineage, taken=Taken.AT_COMMIT)


def test_checkpoint_round_trip(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    from federator.client.tasks import DIGITS_MLP
    from federator.client.weights import arrays_to_numpy
    from federator.server.federation.gate import Candidate
    from federator.server.tracking._versions import Lineage

    plan = build_plan(raw_config, source="test")
    model = arrays_to_numpy(initial_arrays(DIGITS_MLP, 0))
    gate, adam, lineage = Gate(plan.gate), FedAdam(), Lineage(champion="2", champion_round=2)
    gate.promote(Candidate(round=2, value=0.9, client_accuracies={}))
    adam.m_t = {"w": np.ones((2, 2), np.float32)}
    saving = Checkpointer()
    _parts(saving, gate, adam, _Loop(model, skips=1), lineage)
    cp = saving.complete(saving.snapshot(3))
    back = read_checkpoint(write_checkpoint(cp, tmp_path / "cp"))
    assert back.round == 3

    gate2, adam2, loop2, lineage2 = Gate(plan.gate), FedAdam(), _Loop({}), Lineage()
    restoring = Checkpointer()
    _parts(restoring, gate2, adam2, loop2, lineage2)
    restoring.restore(back)
    assert gate2.state_dict() == gate.state_dict() == {"champion_round": 2, "champion_value": 0.9}
    assert lineage2 == lineage
    assert loop2.skips == 1
    assert adam2.m_t is not None
    assert adam2.v_t is None  # not set when saved: not set after
    assert np.array_equal(adam2.m_t["w"], adam.m_t["w"])
    assert list(loop2.arrays) == list(model)  # the model's key order survives
    for key, arr in model.items():
        assert np.array_equal(loop2.arrays[key], arr)
        assert loop2.arrays[key].dtype == arr.dtype


def test_fedadam_moments_round_trip() -> None:
    a, b = FedAdam(), FedAdam()
    a.m_t = {"w": np.arange(4.0)}
    a.v_t = {"w": np.arange(4.0) ** 2}
    StrategyState(b, ("m_t", "v_t")).load_state_dict(StrategyState(a, ("m_t", "v_t")).state_dict())
    assert b.m_t is not None
    assert b.v_t is not None
    assert np.array_equal(b.m_t["w"], a.m_t["w"])
    assert np.array_equal(b.v_t["w"], a.v_t["w"])
    a.m_t["w"][0] = 99.0  # the state is a copy, not the strategy's own arrays
    assert b.m_t["w"][0] == 0.0


def test_resumed_federation_matches_an_uninterrupted_one(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    full = run_federation(
        FakeGrid(client_handlers(4)),
        _plan(raw_config, tmp_path / "a"),
        display=LogProgress(lambda _: None),
    )

    plan = _plan(raw_config, tmp_path / "b")
    run_id = _interrupted_run(plan, after=2)
    client = _client(plan)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[CHECKPOINT_TAG] == "2"

    resumed = run_federation(
        FakeGrid(client_handlers(4, id_seed=7)),
        plan,
        display=LogProgress(lambda _: None),
        resume=run_id,
    )
    assert resumed.run_id == run_id
    assert [o.round for o in resumed.outcomes] == [3, 4]
    versions = client.search_model_versions("name = 'unit'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2, 3, 4]
    steps = [m.step for m in client.get_metric_history(run_id, "val/accuracy")]
    assert steps == [0, 1, 2, 3, 4]  # no round logged twice
    assert client.get_run(run_id).info.status == "FINISHED"
    # FedAdam's moments, the gate and the global model came back exactly.
    for a, b in zip(full.outcomes[2:], resumed.outcomes, strict=True):
        assert a.server_eval == b.server_eval
        assert a.decision == b.decision
    assert resumed.champion_round == full.champion_round


def test_a_version_registered_after_the_last_checkpoint_is_not_kept_twice(
    raw_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(raw_config, tmp_path)
    original = MlflowTracking._commit_checkpoint

    def crash_at_round_3(self: MlflowTracking, cp: Checkpoint) -> None:
        if cp.round == 3:
            raise OSError("disk full while checkpointing")
        original(self, cp)

    monkeypatch.setattr(MlflowTracking, "_commit_checkpoint", crash_at_round_3)
    with pytest.raises(TrackingError, match="disk full"):
        run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None))
    client = _client(plan)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    rounds = sorted(
        int(v.tags["federator.round"]) for v in client.search_model_versions("name = 'unit'")
    )
    assert rounds == [1, 2, 3]  # round 3 was registered, but never checkpointed

    monkeypatch.setattr(MlflowTracking, "_commit_checkpoint", original)
    run_federation(
        FakeGrid(client_handlers(4)),
        plan,
        display=LogProgress(lambda _: None),
        resume=run.info.run_id,
    )
    versions = client.search_model_versions("name = 'unit'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2, 3, 4]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "round/wall_time_s")]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_another_config(raw_config: dict[str, Any], tmp_path: Path) -> None:
    run_id = _interrupted_run(_plan(raw_config, tmp_path), after=1)
    other = _plan(raw_config, tmp_path, lr=0.05)
    with pytest.raises(ConfigError, match="made with another config"):
        run_federation(
            FakeGrid(client_handlers(4)), other, display=LogProgress(lambda _: None), resume=run_id
        )


def test_resume_of_an_unknown_run(raw_config: dict[str, Any], tmp_path: Path) -> None:
    plan = _plan(raw_config, tmp_path)
    _interrupted_run(plan, after=1)
    with pytest.raises(TrackingError, match="no MLflow run 0123"):
        run_federation(
            FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None), resume="0123"
        )


def test_a_run_killed_before_its_first_commit_resumes_from_round_1(
    raw_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(raw_config, tmp_path)
    original = MlflowTracking._commit_checkpoint

    def crash(self: MlflowTracking, cp: Checkpoint) -> None:
        raise OSError("disk full before the first checkpoint")

    monkeypatch.setattr(MlflowTracking, "_commit_checkpoint", crash)
    with pytest.raises(TrackingError, match="disk full"):
        run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None))
    client = _client(plan)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert CHECKPOINT_TAG not in run.data.tags

    monkeypatch.setattr(MlflowTracking, "_commit_checkpoint", original)
    lines: list[str] = []
    resumed = run_federation(
        FakeGrid(client_handlers(4)),
        plan,
        display=LogProgress(lines.append),
        resume=run.info.run_id,
    )
    assert any("resumed from round 1 (no round had been saved)" in line for line in lines)
    assert [o.round for o in resumed.outcomes] == [1, 2, 3, 4]
    versions = client.search_model_versions("name = 'unit'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2, 3, 4]
    for metric in ("val/accuracy", "round/wall_time_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert len(steps) == len(set(steps)), (metric, steps)


def test_a_failed_export_loses_no_round_and_a_resume_exports_it(
    raw_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federator.server.tracking._export import FLAVOUR_TAG, FlavourState, ModelExporter

    plan = _plan(raw_config, tmp_path)
    original = ModelExporter.export

    def broken(self: ModelExporter, **kwargs: Any) -> Any:
        if "round-0002" in str(kwargs["weights"]):
            raise TrackingError("exporting the MLflow model failed: torch.export said no")
        return original(self, **kwargs)

    monkeypatch.setattr(ModelExporter, "export", broken)
    with pytest.raises(TrackingError, match=r"every round is recorded.*version\(s\) 2 "):
        run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None))
    client = _client(plan)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.data.tags[CHECKPOINT_TAG] == "4"  # every round was committed all the same
    flavours = {
        str(v.version): v.tags[FLAVOUR_TAG] for v in client.search_model_versions("name = 'unit'")
    }
    assert flavours == {
        "1": FlavourState.READY.value,
        "2": FlavourState.FAILED.value,
        "3": FlavourState.READY.value,
        "4": FlavourState.READY.value,
    }

    monkeypatch.setattr(ModelExporter, "export", original)
    again = run_federation(
        FakeGrid(client_handlers(4)),
        plan,
        display=LogProgress(lambda _: None),
        resume=run.info.run_id,
    )
    assert again.outcomes == []  # nothing left to train
    v2 = client.get_model_version("unit", "2")
    assert v2.tags[FLAVOUR_TAG] == FlavourState.READY.value
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(plan.tracking.uri)
    mlflow.set_registry_uri(plan.tracking.uri)
    try:
        model = mlflow.pytorch.load_model("models:/unit/2")
    finally:
        mlflow.set_tracking_uri("")
    assert sum(p.numel() for p in model.parameters()) > 0
