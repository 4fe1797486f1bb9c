"""End to end: simulated nodes serve their model; drift and swaps reach the coordinator.

1. A federation (`federator simulate`, signed releases) installs a champion in every simulated
   node's store.
2. Two nodes serve it (`federator node serve`, real processes) with a drift reference of
   digits; real HTTP clients send one of them digits like the training data, the other the
   same digits brightened — and keep sending while
3. a second federation runs: its releases are installed into the serving nodes' stores under
   load (no request may fail), and the nodes' replies carry their services' reports.
4. MLflow holds them per pseudonym; `federator monitor` shows the brightened node drifting
   and the other not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from procs import BIN, child_env, free_port, run_cli, write_config

from federator.client.serving.monitor import write_reference
from federator.simulations.datasets import ArrayData

pytestmark = pytest.mark.integration
NAME, SEED = "e2e-monitor", 11  # write_config's seed
PACE = 0.02  # seconds between one client's requests


def _pseudonym(label: str) -> str:
    return hmac.new(f"{NAME}:{SEED}".encode(), label.encode(), hashlib.sha256).hexdigest()[:10]


@contextmanager
def _serve(store: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "federator"), "node", "serve", "--store", str(store), "--port", str(port),
             "--poll", "0.1", "--drift-window", "100"],
            env=child_env(PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            threading.Event().wait(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


class _Traffic(threading.Thread):
    def __init__(self, url: str, rows: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.url, self.rows, self.statuses, self.versions = url, rows, [], set()
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            # Paced (~50 requests/s per node): steady traffic for the drift windows and the
            # swaps, without taking the core the federation under test trains on.
            while not self.stop.wait(PACE):
                chunk = self.rows[(i * 10) % len(self.rows) :][:10]
                reply = client.post("/predict", json={"inputs": chunk.tolist()})
                self.statuses.append(reply.status_code)
                if reply.status_code == 200:
                    self.versions.add(reply.json()["version"])
                i += 1


def test_serving_nodes_report_drift_and_swap_under_load(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from sklearn.datasets import load_digits

    assert (
        run_cli("keys", "generate", "--out", str(tmp_path / "keys"), cwd=tmp_path).returncode == 0
    )
    runs = tmp_path / "runs"
    release = f'\n[release]\nsigning_key = "{tmp_path / "keys" / "release.key"}"\nkeep = 3\n'
    retrain = "[retrain]\ndrift_nodes = 1\ndrift_features = 0.5\ncooldown_hours = 0\nrounds = 1\n"
    cfg = write_config(
        tmp_path / "fed.toml", name=NAME, runs_dir=runs, rounds=2, extra=release + retrain
    )
    first = run_cli("simulate", str(cfg), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stores = runs / "nodes" / NAME
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    for label in ("partition-0", "partition-1"):
        write_reference(ArrayData(x[:1000], y[:1000]), stores / label, rng=np.random.default_rng(0))
    like, bright = x[1000:1500], np.clip(x[1000:1500] + 0.5, 0, 1.5)

    with ExitStack() as stack:
        urls = [
            stack.enter_context(_serve(stores / p, tmp_path / f"{p}.log"))
            for p in ("partition-0", "partition-1")
        ]
        traffic = [_Traffic(urls[0], bright), _Traffic(urls[1], like)]
        for t in traffic:
            t.start()
        threading.Event().wait(3)  # a few windows of traffic before the federation asks
        second = run_cli("simulate", str(cfg), cwd=tmp_path)
        threading.Event().wait(1)
        for t in traffic:
            t.stop.set()
            t.join(timeout=30)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for t in traffic:
        assert len(t.statuses) > 50
        assert set(t.statuses) == {200}, [s for s in t.statuses if s != 200][:5]
        assert len(t.versions) >= 2  # the second federation's champion was swapped in

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    drifting, steady = _pseudonym("partition-0"), _pseudonym("partition-1")
    metrics = run.data.metrics
    assert metrics[f"serving/{drifting}/drifted_features"] > 0.5
    assert metrics[f"serving/{steady}/drifted_features"] < 0.1
    assert metrics[f"serving/{drifting}/rows"] > 100
    quiet = f"serving/{_pseudonym('partition-2')}/"  # serves nothing: no traffic, no drift
    assert {k.removeprefix(quiet) for k in metrics if k.startswith(quiet)} == {
        "installed_accuracy",
        "installed_version",
    }
    shown = run_cli("monitor", str(cfg), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert drifting in shown.stdout
    assert steady in shown.stdout
    assert "drift in" in second.stdout  # the round display named the drifting node
    _installed_accuracy_matches_training(client, run.data.metrics)
    assert "installed accuracy" in shown.stdout

    _watch_retrains_from_the_champion(
        client, cfg, tmp_path, after=run.info.run_id, drifting=drifting
    )


def _installed_accuracy_matches_training(client: Any, metrics: dict[str, float]) -> None:
    """Each node evaluated the version it had installed on its own validation split. Its data
    has not changed, so the number equals what the same node reported for that version in
    the round that trained it (logged by the coordinator then): the champion has not decayed."""
    from federator.server.tracking.serving_view import observe

    installed = {
        k.split("/")[1]: v for k, v in metrics.items() if k.endswith("/installed_accuracy")
    }
    assert len(installed) >= 3  # every node evaluated, serving or not
    for pseudonym, accuracy in installed.items():
        version = client.get_model_version(
            NAME, str(int(metrics[f"serving/{pseudonym}/installed_version"]))
        )
        at = int(version.tags["federator.round"])
        then = [
            m.value
            for m in client.get_metric_history(version.run_id, f"client/{pseudonym}/val_accuracy")
            if m.step == at
        ]
        assert then == [pytest.approx(accuracy, abs=1e-9)], pseudonym
    # watch compares only the nodes that measured the champion itself (a node evaluates
    # before the round's release arrives, so its newest number may be of the one before).
    champion = int(client.get_model_version_by_alias(NAME, "champion").version)
    measured_it = {p for p in installed if metrics[f"serving/{p}/installed_version"] == champion}
    drops = observe(client, experiment=NAME, model=NAME).accuracy_drops
    assert set(drops) == measured_it
    assert all(abs(d) < 1e-9 for d in drops.values())


def _watch_retrains_from_the_champion(
    client: Any, cfg: Path, tmp_path: Path, *, after: str, drifting: str
) -> None:
    """5. watch sees the drifting node and starts a federation from the champion."""
    champion = client.get_model_version_by_alias(NAME, "champion")
    watched = run_cli("watch", str(cfg), "--once", cwd=tmp_path)
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
    assert "retrain (drift): 1 node(s) report drift" in watched.stdout
    assert drifting in watched.stdout
    newest = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert newest.info.run_id != after
    assert newest.data.tags["federator.warm_start"] == str(champion.version)
    assert newest.data.tags["federator.started_by"].startswith("retrain: drift: ")
    [child] = [
        v
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.run_id == newest.info.run_id
    ]
    assert child.tags["federator.parent_version"] == str(champion.version)
