"""A real deployment on 127.0.0.1 for the integration tests: provisioned kits, a running
coordinator (SuperLink with TLS and node authentication), partner nodes on their own data
files, and the CLI processes around them — each started in its own session and stopped by
its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from procs import BIN, child_env, free_port, run_cli

NODES = ("site-a", "site-b", "site-c")


def start_cli(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``federator ARGS`` in its own session, output to ``<cwd>/<pid>.out`` (polled by
    `_wait_for`: a pipe read through Python's buffers can hide lines from select)."""
    log = cwd / f"cli-{time.monotonic_ns()}.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "federator"), *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def cli_output(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for(proc: subprocess.Popen[str], marker: str, *, timeout: float) -> str:
    """Wait until ``marker`` is in the process's output; fail with the output otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in (seen := cli_output(proc)):
            return seen
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"{marker!r} not seen (exit {proc.poll()}):\n{cli_output(proc)}")


def stop_cli(*procs: subprocess.Popen[str], grace: float = 40) -> None:
    """SIGTERM the processes together (our CLI stops its Flower children), then wait for each:
    they shut down side by side, not one after the other. One still running after ``grace``
    seconds is killed with its process group and fails the test."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    stuck = []
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            stuck.append(proc.pid)
    if stuck:
        pytest.fail(f"pid(s) {stuck} did not stop on SIGTERM")


def group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Provisioned kits, a running coordinator, node data files. Stops everything after."""
    from sklearn.datasets import load_digits

    port = free_port()
    fed_file = tmp_path / "federation.toml"
    fed_file.write_text(
        f'[federation]\nname = "e2e-deploy"\ncoordinator = "127.0.0.1:{port}"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\n' for n in NODES)
    )
    env = child_env(PYTHONUNBUFFERED="1")
    provisioned = run_cli("provision", str(fed_file), "--out", str(tmp_path / "kits"), cwd=tmp_path)
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    kits = tmp_path / "kits"
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    data = {}
    for i, name in enumerate(NODES):
        data[name] = tmp_path / f"{name}.npz"
        np.savez(data[name], x=x[i * 400 : (i + 1) * 400], y=y[i * 400 : (i + 1) * 400])
    coordinator = start_cli(
        ["coordinator", "start", "--kit", str(kits / "coordinator")], cwd=tmp_path, env=env
    )
    started: list[subprocess.Popen[str]] = [coordinator]
    try:
        wait_for(coordinator, "ready", timeout=120)
        yield {
            "tmp": tmp_path,
            "kits": kits,
            "port": port,
            "data": data,
            "env": env,
            "started": started,
            "coordinator": coordinator,
        }
    finally:
        # The nodes (and any submitter) first, all at once, while the SuperLink they
        # deregister from is still up; then the coordinator(s).
        coordinators = [p for p in started if p.args[1] == "coordinator"]  # type: ignore[index]
        stop_cli(*(p for p in started if p not in coordinators))
        stop_cli(*coordinators)
        for proc in started:
            assert group_members(proc.pid) == [], f"processes left behind by pid {proc.pid}"


def start_node(
    d: dict[str, Any], name: str, *, port: int, stock: bool = False, extra: list[str] | None = None
) -> subprocess.Popen[str]:
    proc = start_cli(
        [
            "node",
            "start",
            "--kit",
            str(d["kits"] / "nodes" / name),
            "--data",
            str(d["data"][name]),
            "--port",
            str(port),
            "--connect-timeout",
            "60",
            *(["--stock-flower"] if stock else []),
            *(extra or []),
        ],
        cwd=d["tmp"],
        env=d["env"],
    )
    d["started"].append(proc)
    return proc


def connected_nodes(d: dict[str, Any], *, stock: bool = False) -> dict[str, subprocess.Popen[str]]:
    """Every partner node started, each on its own port, and admitted by the SuperLink."""
    nodes = {name: start_node(d, name, port=free_port(), stock=stock) for name in NODES}
    for proc in nodes.values():
        wait_for(proc, "connected:", timeout=90)
    return nodes


def fed_config(d: dict[str, Any], *, rounds: int, extra: str) -> Path:
    """The test federation (digits-mlp on the 3 nodes, MLflow in the test's directory) with
    ``extra`` TOML sections."""
    cfg = d["tmp"] / "fed.toml"
    cfg.write_text(
        f"""
[federation]
name = "e2e-deploy"
rounds = {rounds}
seed = 5
[task]
name = "digits-mlp"
[data]
clients = 3
[tracking]
runs_dir = "{d["tmp"] / "runs"}"
"""
        + extra
    )
    return cfg


def eval_list(tag: str) -> list[str]:
    import json

    return list(json.loads(tag))


def released_run(d: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    """A 2-round federation with signed releases, submitted with ``federator run … flags``;
    asserts it finished."""
    kit = d["kits"] / "coordinator"
    cfg = fed_config(
        d,
        rounds=2,
        extra=f"""
[training]
epochs = 2
lr = 0.1
momentum = 0.9
[gate]
threshold = 0.3
[release]
signing_key = "{kit / "release.key"}"
""",
    )
    address = f"127.0.0.1:{d['port']}"
    result = run_cli(
        "run", str(cfg), "--coordinator", address, "--kit", str(kit), *flags,
        cwd=d["tmp"], env=d["env"], timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Federation 'e2e-deploy' finished" in result.stdout, result.stdout[-6000:]
    return result


def champion_on_every_node(d: dict[str, Any]) -> list[Any]:
    """The run's model versions (one per round, 1 and 2), after checking that every node
    installed the champion."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'e2e-deploy'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2]
    champion = client.get_registered_model("e2e-deploy").aliases["champion"]
    for name in NODES:
        current = d["kits"] / "nodes" / name / "state" / "models" / "current"
        assert current.is_symlink(), f"{name} installed no release"
        assert Path(os.readlink(current)).name == str(champion)
    return list(versions)
