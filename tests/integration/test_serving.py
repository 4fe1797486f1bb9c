"""End to end: ``federator node serve`` as its own process, driven by real HTTP clients.

A store with a signed release; the service started with a bearer token; client threads send
requests without pause while the test installs new releases into the store — as the node
does when the coordinator pushes one — including one that is signed but does not load.
Every request must succeed, the service must move to each good version and stay on the last
good one. The process is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from procs import BIN, child_env, free_port
from releases_for_tests import install, release

from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.events import events_path, read_records
from federator.client.store import ModelStore

pytestmark = pytest.mark.integration

TOKEN = "integration-token-0123456789"


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"node serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"node serve did not become healthy:\n{log.read_text()}")


@contextmanager
def serving(store: ModelStore, tmp_path: Path, *extra: str) -> Iterator[tuple[str, Path]]:
    """``federator node serve`` on ``store`` (token required), until the block ends; its URL
    and log. Stopped by its process group's id."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "federator"), "node", "serve", "--store", str(store.root),
                "--port", str(port), "--token-file", str(token_file), "--poll", "0.1", *extra,
            ],
            env=child_env(PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_ready(url, proc, log)
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


class Traffic:
    """Client threads posting the same rows without pause; every (status, version) kept."""

    def __init__(self, url: str, *, threads: int = 3) -> None:
        self.results: list[tuple[int, int | None]] = []
        self._url = url
        self._rows = np.random.default_rng(0).random((2, 64)).tolist()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._drive) for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _drive(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self._url, headers=headers, timeout=10) as client:
            while not self._stop.is_set():
                reply = client.post("/predict", json={"inputs": self._rows})
                version = reply.json().get("version") if reply.status_code == 200 else None
                self.results.append((reply.status_code, version))


def test_the_service_swaps_under_load_without_a_failed_request(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    key = load_private_key(keys.private)
    store = ModelStore.open(tmp_path / "node", pinned_key=keys.public, model="m", keep=3)
    install(store, key, tmp_path, 1)
    with serving(store, tmp_path) as (url, log), Traffic(url) as traffic:
        for version in (2, 3):
            time.sleep(0.5)
            install(store, key, tmp_path, version)
            _wait_for_version(url, version)
        # Version 4 is signed and installed, but its weights do not fit the task's model.
        bad = release(key, tmp_path / "rel-4", 4, model=torch.nn.Linear(3, 2))
        store.install(bad.envelope, bad.files)
        time.sleep(1.0)
        traffic.__exit__()
        statuses = [s for s, _ in traffic.results]
        assert len(statuses) > 100
        assert set(statuses) == {200}, f"failed requests: {[s for s in statuses if s != 200]}"
        served = [v for _, v in traffic.results]
        assert {1, 2, 3} <= set(served)
        assert 4 not in served
        assert served[-1] == 3
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["version"]) == ("degraded", 3)
        assert "version 4 does not load" in health["problem"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        metrics = httpx.get(f"{url}/metrics", headers=auth).text
        assert "federator_serve_swaps_total 3.0" in metrics  # 1 at start, then 2 and 3
        assert "federator_serve_swap_failures_total 1.0" in metrics
        assert "federator_serve_model_version 3.0" in metrics
    text = log.read_text()
    assert "serving version 3" in text
    assert "still serving version 3: version 4 does not load" in text


def _wait_for_version(url: str, version: int) -> None:
    deadline = time.monotonic() + 20
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/model", headers=headers).json().get("version") == version:
            return
        time.sleep(0.05)
    pytest.fail(f"the service did not move to version {version}")


def _diverged(seed: int) -> torch.nn.Module:
    """A digits MLP whose training diverged: its weights are finite, so it loads and runs,
    but its activations overflow and every output is NaN."""
    from federator.client.tasks import DIGITS_MLP

    torch.manual_seed(seed)
    model = DIGITS_MLP.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e20)
    return model


def test_a_canary_that_breaks_falls_back_and_says_so(tmp_path: Path) -> None:
    """A signed version that loads but answers NaN, rolled out as a canary to half the
    traffic: not one request fails, the node goes back to the version it had — in the store
    too — never tries the broken one again, and its events, /health and /metrics say why."""
    keys = generate_keys(tmp_path / "keys")
    key = load_private_key(keys.private)
    store = ModelStore.open(tmp_path / "node", pinned_key=keys.public, model="m", keep=3)
    install(store, key, tmp_path, 1)
    rollout = ("--rollout", "canary", "--canary-fraction", "0.5")
    with serving(store, tmp_path, *rollout) as (url, log), Traffic(url) as traffic:
        time.sleep(0.5)
        broken = release(key, tmp_path / "rel-2", 2, model=_diverged(2))
        assert store.install(broken.envelope, broken.files) == 2
        deadline = time.monotonic() + 20
        while store.current_version() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # traffic goes on after the fall-back
        traffic.__exit__()
        statuses = [s for s, _ in traffic.results]
        assert len(statuses) > 20
        assert set(statuses) == {200}, f"failed requests: {[s for s in statuses if s != 200]}"
        assert {v for _, v in traffic.results} == {1}  # the canary's answers were replaced
        assert store.current_version() == 1  # rolled back in the store
        info = httpx.get(f"{url}/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert (info["version"], info["candidate"]) == (1, None)
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'federator_serve_rollout_events_total{kind="fell-back"} 1.0' in metrics
    events, _ = read_records(events_path(store.root), after=0)
    assert [e["kind"] for e in events] == ["started", "fell-back"]
    assert "not finite" in events[-1]["reason"]
    assert "not finite" in log.read_text()
