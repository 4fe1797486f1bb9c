"""End to end: signed releases reach every simulated node; a killed federation resumes.

Both run the real `federator` command in subprocesses on Flower's Simulation Engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from procs import BIN, child_env, run_cli, write_config

pytestmark = pytest.mark.integration
ROUNDS = 6  # killed once round 2 is checkpointed: the rest leaves room to catch it running


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_every_node_installs_the_champion_and_refuses_a_tampered_release(tmp_path: Path) -> None:
    keys = run_cli("keys", "generate", "--out", str(tmp_path / "keys"), cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    runs = tmp_path / "runs"
    cfg = write_config(
        tmp_path / "fed.toml",
        name="e2e-release",
        runs_dir=runs,
        rounds=3,
        extra=f'\n[release]\nsigning_key = "{tmp_path / "keys" / "release.key"}"\nkeep = 2\n',
    )
    result = run_cli("simulate", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed on 4/4 node(s)" in result.stdout

    client = _client(f"sqlite:///{runs / 'mlflow.db'}")
    champion = str(client.get_registered_model("e2e-release").aliases["champion"])
    version = client.get_model_version("e2e-release", champion)
    assert "federator.release.key_id" in version.tags
    stores = sorted((runs / "nodes" / "e2e-release").iterdir())
    assert len(stores) == 4
    for store in stores:
        listed = run_cli("node", "models", "--store", str(store), cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert (store / "current").resolve().name == champion

    # A partner tampers with an exported release: refused, installed model untouched.
    exported = tmp_path / "release"
    export = run_cli(
        "models", "export", str(cfg), "--version", champion, "--out", str(exported), cwd=tmp_path
    )
    assert export.returncode == 0, export.stderr
    weights = exported / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    node = tmp_path / "partner"
    init = run_cli(
        "node",
        "init",
        "--store",
        str(node),
        "--pinned-key",
        str(tmp_path / "keys" / "release.pub"),
        "--model",
        "e2e-release",
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr
    refused = run_cli(
        "node", "install", "--store", str(node), "--release", str(exported), cwd=tmp_path
    )
    assert refused.returncode == 1
    assert "does not match its signed sha256 digest" in refused.stderr
    assert not (node / "current").exists()


def _wait_for_checkpoint(
    db: Path, proc: subprocess.Popen[bytes], at_least: int, timeout: float = 300
) -> tuple[str, int]:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the federation ended before it could be killed")
        rows = []
        if db.is_file():
            try:
                with sqlite3.connect(db) as conn:
                    rows = conn.execute(
                        "SELECT run_uuid, value FROM tags WHERE key = 'federator.checkpoint_round'"
                    ).fetchall()
            except sqlite3.OperationalError:
                rows = []  # MLflow is still creating its tables
        if rows and int(rows[0][1]) >= at_least:
            return str(rows[0][0]), int(rows[0][1])
        time.sleep(0.1)
    raise AssertionError("no checkpoint appeared in time")


def test_a_killed_federation_resumes_without_repeating_a_round(tmp_path: Path) -> None:
    extra = '\n[strategy]\nname = "fedadam"\n\n[strategy.params]\neta = 0.01\n'

    def config(name: str) -> Path:
        path = write_config(
            tmp_path / f"{name}.toml",
            name="e2e-resume",
            runs_dir=tmp_path / name,
            rounds=ROUNDS,
            extra=extra,
        )
        text = path.read_text().replace('name = "digits-mlp"', 'name = "mnist-cnn"')
        path.write_text(
            text.replace("epochs = 2", "epochs = 2\nbatch_size = 32", 1).replace(
                "batch_size = 16\n", ""
            )
        )
        return path

    baseline = run_cli("simulate", str(config("baseline")), cwd=tmp_path)
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr

    crashed = config("crashed")
    log = (tmp_path / "crashed.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "federator"), "simulate", str(crashed)],
        cwd=tmp_path,
        env=child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        db = tmp_path / "crashed" / "mlflow.db"
        run_id, done = _wait_for_checkpoint(db, proc, at_least=2)
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator dies: no cleanup at all
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    assert 2 <= done < ROUNDS

    resumed = run_cli("simulate", str(crashed), "--resume", run_id, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    a = _client(f"sqlite:///{tmp_path / 'baseline' / 'mlflow.db'}")
    b = _client(f"sqlite:///{tmp_path / 'crashed' / 'mlflow.db'}")
    (base_run,) = a.search_runs([a.get_experiment_by_name("e2e-resume").experiment_id])
    rounds = sorted(
        int(v.tags["federator.round"]) for v in b.search_model_versions("name = 'e2e-resume'")
    )
    assert rounds == sorted(
        int(v.tags["federator.round"]) for v in a.search_model_versions("name = 'e2e-resume'")
    )
    assert len(rounds) == len(set(rounds))  # no round registered twice
    steps = [m.step for m in b.get_metric_history(run_id, "val/accuracy")]
    assert steps == list(range(ROUNDS + 1))
    assert b.get_run(run_id).info.status == "FINISHED"
    final_a = a.get_metric_history(base_run.info.run_id, "val/accuracy")[-1].value
    final_b = b.get_metric_history(run_id, "val/accuracy")[-1].value
    assert abs(final_a - final_b) < 1e-6
