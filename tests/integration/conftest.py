"""Fixtures for multi-process tests: a real `mlflow server` started and stopped by PID."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import BIN, child_env, free_port, stop


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    port = free_port()
    store = tmp_path / "mlflow-server"
    store.mkdir()
    log = (store / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'db.sqlite'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(),
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "mlflow server did not come up:\n" + (store / "server.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield uri
    finally:
        stop(proc)
        log.close()
