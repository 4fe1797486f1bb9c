"""End to end: `federator simulate` on Flower's Simulation Engine (Ray), real MLflow stores.

Each test runs the CLI in a subprocess exactly as a researcher would, then inspects what was
recorded through MLflow's own client.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from procs import REPO, child_env, free_port, run_cli, stop_by_marker, write_config

pytestmark = pytest.mark.integration


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_federation(
    client: Any, model: str, run_id: str, rounds: int, *, latest: bool = True
) -> list[Any]:
    """Versions, tags, aliases, metrics and artifacts a finished federation must have."""
    versions = sorted(
        (v for v in client.search_model_versions(f"name = '{model}'") if v.run_id == run_id),
        key=lambda v: int(v.version),
    )
    assert [v.tags["federator.round"] for v in versions] == [str(r) for r in range(1, rounds + 1)]
    assert versions[0].tags["federator.parent_version"] == "none"
    for prev, nxt in itertools.pairwise(versions):
        assert nxt.tags["federator.parent_version"] == str(prev.version)
    for v in versions:
        for tag in (
            "federator.participants",
            "federator.participant_examples",
            "federator.config_hash",
            "federator.code_version",
            "federator.strategy",
            "federator.gate.decision",
            "federator.gate.reasons",
        ):
            assert v.tags.get(tag), tag
        assert len(json.loads(v.tags["federator.participants"])) == 4
    aliases = client.get_registered_model(model).aliases
    if latest:  # the newest federation's last version is the challenger
        assert str(aliases["challenger"]) == str(versions[-1].version)
    assert "champion" in aliases
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val/accuracy")) == rounds + 1
    assert len([k for k in run.data.metrics if k.startswith("client/")]) >= 4 * 5
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert artifacts == {"plots/accuracy.png", "plots/client_accuracy.png"}
    files = {
        a.path.rsplit("/", 1)[-1]
        for a in client.list_artifacts(run_id, f"models/round-{rounds:04d}")
    }
    assert {"MLmodel", "weights.safetensors", "lineage.json"} <= files
    return versions


def _load_champion(uri: str, model: str) -> Any:
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pytorch.load_model(f"models:/{model}@champion")
    finally:
        mlflow.set_tracking_uri("")


def _run_ids(client: Any, experiment: str) -> list[str]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r.info.run_id for r in runs]


def test_simulation_with_embedded_sqlite_store_is_reproducible(tmp_path: Path) -> None:
    import torch

    runs_dir = tmp_path / "runs"
    cfg = write_config(tmp_path / "fed.toml", name="e2e-sqlite", runs_dir=runs_dir)
    first = run_cli("simulate", str(cfg), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Federation 'e2e-sqlite' finished" in first.stdout
    assert "champion" in first.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in first.stdout

    second = run_cli("simulate", str(cfg), cwd=tmp_path)  # same config, same seed
    assert second.returncode == 0, second.stdout + second.stderr

    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    client = _client(uri)
    run_a, run_b = _run_ids(client, "e2e-sqlite")
    _check_federation(client, "e2e-sqlite", run_a, rounds=2, latest=False)
    _check_federation(client, "e2e-sqlite", run_b, rounds=2)
    for key in ("val/accuracy", "val/loss", "train/loss", "clients/accuracy"):
        a = [m.value for m in client.get_metric_history(run_a, key)]
        b = [m.value for m in client.get_metric_history(run_b, key)]
        assert a == b, key  # bit-for-bit: same config + seed → same results

    model = _load_champion(uri, "e2e-sqlite")
    assert model(torch.zeros(3, 64)).shape == (3, 10)

    listed = run_cli("models", "list", str(cfg), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("e2e-sqlite") >= 1
    assert "champion" in listed.stdout


def test_simulation_against_a_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    import torch

    cfg = write_config(tmp_path / "fed.toml", name="e2e-http", runs_dir=tmp_path / "unused")
    result = run_cli("simulate", str(cfg), "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{mlflow_server}/#/experiments/" in result.stdout
    client = _client(mlflow_server)
    (run_id,) = _run_ids(client, "e2e-http")
    _check_federation(client, "e2e-http", run_id, rounds=2)
    model = _load_champion(mlflow_server, "e2e-http")
    assert model(torch.zeros(2, 64)).shape == (2, 10)
    assert not (tmp_path / "unused" / "mlflow.db").exists()  # nothing went to a local store


def test_bad_client_updates_are_rejected_and_rounds_go_on(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    cfg = write_config(
        tmp_path / "fed.toml", name="e2e-poison", runs_dir=runs_dir, clients=8, extra="", rounds=2
    )
    text = cfg.read_text().replace('name = "digits-mlp"', 'name = "poison_task:task"')
    text = text.replace("[data]\n", '[data]\npartitioner = "shards"\n')
    text = text.replace("max_client_spread = 0.5", "")
    cfg.write_text(text)
    env = child_env(PYTHONPATH=str(Path(__file__).parent))
    result = run_cli("simulate", str(cfg), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused train from" in result.stdout
    assert "contains NaN or infinite values" in result.stdout
    client = _client(f"sqlite:///{runs_dir / 'mlflow.db'}")
    (run_id,) = _run_ids(client, "e2e-poison")
    refused = [m.value for m in client.get_metric_history(run_id, "round/refused")]
    participants = [m.value for m in client.get_metric_history(run_id, "round/participants")]
    assert len(refused) == 2
    assert all(r >= 1 for r in refused)
    assert all(p + r == 8 for p, r in zip(participants, refused, strict=True))
    versions = client.search_model_versions("name = 'e2e-poison'")
    assert len(versions) == 2  # both rounds still produced a (finite) global model


def test_unreachable_tracking_uri_starts_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fed.toml", name="e2e-down", runs_dir=tmp_path / "runs")
    t0 = time.monotonic()
    result = run_cli(
        "simulate", str(cfg), "--tracking-uri", f"http://127.0.0.1:{free_port()}", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "TrackingError: cannot reach MLflow at http://127.0.0.1:" in result.stderr
    assert time.monotonic() - t0 < 60  # refused before Ray or any client started
    assert not (tmp_path / "runs").exists()


def test_flwr_run_from_the_checkout(tmp_path: Path) -> None:
    """The repository root is a Flower App: `flwr run .` runs the same federation."""
    import os
    import subprocess

    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 4\noptions.backend.client-resources.num-cpus = 1\n"
    )
    runs_dir = tmp_path / "runs"
    cfg = write_config(tmp_path / "fed.toml", name="e2e-flwr", runs_dir=runs_dir)
    env = child_env(
        FLWR_HOME=str(home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
    )
    try:
        result = subprocess.run(
            [
                str(Path(env["PATH"].split(os.pathsep)[0]) / "flwr"),
                "run",
                ".",
                "local",
                "--stream",
                "--run-config",
                f"federation-config='{cfg}'",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        # `flwr run` leaves a detached SuperLink behind: find it by its unique database path
        # (under this test's FLWR_HOME) and stop it by PID.
        leftovers = stop_by_marker("flower-superlink", str(home))
    assert leftovers, "expected flwr run to leave a local SuperLink to stop"
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "round 2:" in output
    client = _client(f"sqlite:///{runs_dir / 'mlflow.db'}")
    (run_id,) = _run_ids(client, "e2e-flwr")
    _check_federation(client, "e2e-flwr", run_id, rounds=2)
    log = (home / "local-superlink" / "superlink.log").read_text()
    assert "uv sync" not in log  # no runtime dependency installation (would fetch CUDA torch)
