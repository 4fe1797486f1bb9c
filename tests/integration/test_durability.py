"""No round lost: a federation SIGKILLed again and again, under full CPU load, ends where an
uninterrupted one does.

The real `federator simulate` of the bundled mnist-cnn federation (10 clients training on
Flower's Simulation Engine keep both cores busy) runs in its own process group. It is killed
with SIGKILL early (as soon as round 1 is shown), mid-run (round 3 shown) and during a write
(round 5's checkpoint uploaded, its commit tag not yet set: a named failpoint holds the
writer there), and resumed with ``--resume`` each time. Each resume must lose at most the
round in flight; in the end every round is registered exactly once, no metric has a step
twice, and the final global model is the uninterrupted run's, weight for weight.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from procs import BIN, child_env, run_cli

from federator.client.weights import load_safetensors

pytestmark = pytest.mark.integration
ROUNDS = 6
NAME = "mnist-cnn"
ROW = re.compile(r"^\s*(\d+)\s+\d+/\d+\s+\S+\s+\S+\s+\S+\s+\S+s\s+(\d+|–)\s", re.MULTILINE)
RESUMED = re.compile(r"resumed after round (\d+), the last one saved|resumed from round 1")


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _args(runs: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "federator"),
        "simulate",
        NAME,
        "--rounds",
        str(ROUNDS),
        "--set",
        f"tracking.runs_dir={runs}",
        *extra,
    ]


def _shown(log: Path) -> list[tuple[int, int]]:
    """(round, saved-through) of every round row the display printed so far."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [(int(r), 0 if s == "–" else int(s)) for r, s in ROW.findall(text)]


def _killed_when(
    args: list[str], log: Path, until: Callable[[], bool], *, env: dict[str, str]
) -> None:
    """Run ``args`` in a process group of its own; SIGKILL the group once ``until()``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not until():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"the federation ended before it could be killed:\n{log.read_text()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"kill point never reached:\n{log.read_text()}")
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)  # no cleanup at all
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _run_id(uri: str) -> str:
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    return str(run.info.run_id)


def _resumed_after(log: Path) -> int:
    match = RESUMED.search(log.read_text())
    assert match, log.read_text()
    return int(match.group(1) or 0)


def _final_weights(uri: str, into: Path) -> dict[str, np.ndarray]:
    client = _client(uri)
    (last,) = [
        v
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.tags["federator.round"] == str(ROUNDS)
    ]
    into.mkdir()
    local = client.download_artifacts(
        last.run_id, f"models/round-{ROUNDS:04d}/weights.safetensors", str(into)
    )
    return {k: v.numpy() for k, v in load_safetensors(Path(local)).items()}


def test_sigkill_at_any_point_loses_at_most_the_round_in_flight(tmp_path: Path) -> None:
    env = child_env(FLWR_HOME=str(tmp_path / "flwr-home"))
    baseline_runs = tmp_path / "baseline"
    baseline = run_cli(*_args(baseline_runs)[1:], cwd=tmp_path, env=env)
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr

    runs = tmp_path / "crashed"
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    # 1. early: killed the moment round 1 is on screen (its commit may still be in flight).
    early = tmp_path / "early.log"
    _killed_when(_args(runs), early, lambda: any(r >= 1 for r, _ in _shown(early)), env=env)
    run_id = _run_id(uri)
    shown = max(r for r, _ in _shown(early))

    # 2. mid-run: resumed, killed once round 3 is on screen.
    mid = tmp_path / "mid.log"
    _killed_when(
        _args(runs, "--resume", run_id), mid, lambda: any(r >= 3 for r, _ in _shown(mid)), env=env
    )
    assert _resumed_after(mid) >= shown - 1  # at most the round in flight was lost
    shown = max(r for r, _ in _shown(mid))

    # 3. during a write: round 5's checkpoint is uploaded, its commit tag not yet set.
    write = tmp_path / "write.log"
    marker = tmp_path / "failpoint-reached"
    _killed_when(
        _args(runs, "--resume", run_id),
        write,
        marker.is_file,
        env={
            **env,
            "FEDERATOR_FAILPOINT": "checkpoint-uploaded:5",
            "FEDERATOR_FAILPOINT_MARKER": str(marker),
        },
    )
    assert _resumed_after(write) >= shown - 1
    run = _client(uri).get_run(run_id)
    assert run.data.tags["federator.checkpoint_round"] == "4"  # round 5 never committed
    assert run.info.status == "RUNNING"  # nobody ended it: the process was killed

    # 4. the last resume runs to the end.
    final = run_cli(*_args(runs, "--resume", run_id)[1:], cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "resumed after round 4, the last one saved" in final.stdout
    assert "saved in MLflow" in final.stdout
    assert f"through round {ROUNDS}" in final.stdout
    for log in (early, mid, write):  # each row showed at most one round not yet saved
        assert all(saved >= r - 1 for r, saved in _shown(log)), log.read_text()

    client = _client(uri)
    versions = client.search_model_versions(f"name = '{NAME}'")
    rounds = sorted(int(v.tags["federator.round"]) for v in versions)
    assert rounds == list(range(1, ROUNDS + 1))  # every round registered, exactly once
    assert {v.tags["federator.flavour"] for v in versions} == {"pytorch"}
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == list(
        range(ROUNDS + 1)
    )

    # Ends where the uninterrupted run ends: the same final model, weight for weight.
    ours = _final_weights(uri, tmp_path / "ours")
    theirs = _final_weights(f"sqlite:///{baseline_runs / 'mlflow.db'}", tmp_path / "theirs")
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
