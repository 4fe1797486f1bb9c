"""Helpers for multi-process tests: the CLI in a subprocess, free ports, stopping by PID.

Every process a test starts is stopped by its PID (its own process group) when it ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``federator ARGS`` in a subprocess (as a user would run it)."""
    return subprocess.run(
        [str(BIN / "federator"), *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(
    path: Path, *, name: str, runs_dir: Path, extra: str = "", rounds: int = 2, clients: int = 4
) -> Path:
    path.write_text(f"""
[federation]
name = "{name}"
rounds = {rounds}
seed = 11

[task]
name = "digits-mlp"

[data]
clients = {clients}

[training]
epochs = 2
batch_size = 16
lr = 0.1
momentum = 0.9

[tracking]
runs_dir = "{runs_dir}"

[gate]
threshold = 0.5
max_client_spread = 0.5
{extra}
""")
    return path


def stop(proc: subprocess.Popen[bytes], *, grace: float = 15) -> None:
    """SIGTERM the process group we started, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def stop_by_marker(program: str, marker: str, *, grace: float = 30) -> list[int]:
    """Stop processes running ``program`` whose command line contains ``marker`` (a path
    unique to this test), by PID; wait until they are gone. Returns the PIDs stopped."""
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    pids = [int(line.split()[0]) for line in ps.splitlines() if program in line and marker in line]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if _running(p)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return pids


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
