"""End to end: a real deployment on 127.0.0.1 — provisioned kits, a SuperLink with TLS and
node authentication, three partner nodes on their own data files, a federation submitted
with `federator run`, signed releases installed on every node. Also: an unregistered node
key and a plaintext connection are refused. Every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from deployed import (
    NODES,
    champion_on_every_node,
    cli_output,
    connected_nodes,
    deployment,
    eval_list,
    fed_config,
    released_run,
    start_cli,
    start_node,
    wait_for,
)
from procs import BIN, free_port, run_cli

pytestmark = pytest.mark.integration
__all__ = ["deployment"]  # the fixture, imported for pytest


def test_three_nodes_with_tls_and_auth_run_a_federation(deployment: dict[str, Any]) -> None:
    d = deployment
    connected_nodes(d)
    released_run(d)
    versions = champion_on_every_node(d)
    for v in versions:
        assert sorted(eval_list(v.tags["federator.participants"])) == sorted(
            eval_list(versions[0].tags["federator.participants"])
        )
        assert len(eval_list(v.tags["federator.participants"])) == 3


def test_unregistered_key_and_plaintext_are_refused(deployment: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = deployment
    # A node whose key the coordinator never registered.
    kit = d["kits"] / "nodes" / NODES[0]
    key = ec.generate_private_key(ec.SECP384R1())
    (kit / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    (kit / "node.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    intruder = start_node(d, NODES[0], port=free_port())
    assert intruder.wait(timeout=180) == 1
    assert "was not admitted" in cli_output(intruder)

    # A plaintext SuperNode (registered key) never gets in.
    plain_log = d["tmp"] / "plain.log"
    with plain_log.open("w") as log:
        plain = subprocess.Popen(
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{d['port']}",
                "--auth-supernode-private-key",
                str(d["kits"] / "nodes" / NODES[1] / "node.key"),
                "--port",
                str(free_port()),
            ],
            env=d["env"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and plain.poll() is None:
            time.sleep(1)
        assert "SuperNode ID" not in plain_log.read_text()
    finally:
        if plain.poll() is None:
            os.killpg(plain.pid, signal.SIGTERM)
            plain.wait(timeout=30)
    assert d["coordinator"].poll() is None  # the coordinator is unaffected


def _crash(node: subprocess.Popen[str]) -> None:
    """Kill a node as a power cut would: SIGKILL its CLI and Flower's processes at once."""
    import re

    pids = [int(p) for p in re.findall(r"pid (\d+)", cli_output(node))]
    for pgid in [node.pid, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    node.wait(timeout=30)


def _after_train_replies(d: dict[str, Any], name: str, count: int, *, timeout: float) -> None:
    """Wait until node ``name`` has sent its ``count``-th train reply in full.

    Rounds take 1–3 s now: watching the coordinator's "round N:" line and then killing a node
    races the next round. The node's own log says when its reply has left, before the
    coordinator can even aggregate the round it belongs to."""
    log = d["kits"] / "nodes" / name / "state" / "supernode.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        sent, done = text.count("Sending: train message"), text.count("Sent successfully")
        if sent >= count and done >= text.count("Sending:"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} did not send train reply {count} within {timeout} s")


def test_nodes_killed_mid_federation(deployment: dict[str, Any]) -> None:
    """3 nodes, min 2: one killed once it has replied in round 1 → round 2 completes without
    it; a second one killed once it has replied in round 2 → round 3 is skipped, no version is
    made for it, the run says so."""
    import json

    d = deployment
    nodes = connected_nodes(d)
    cfg = fed_config(
        d,
        rounds=3,
        extra="""
[strategy]
min_available_nodes = 2
min_replies = 2
round_timeout = 20.0  # rounds take ~3 s here; a dead node costs one timeout
fraction_evaluate = 0.0
""",
    )
    run = start_cli(
        [
            "run",
            str(cfg),
            "--coordinator",
            f"127.0.0.1:{d['port']}",
            "--kit",
            str(d["kits"] / "coordinator"),
        ],
        cwd=d["tmp"],
        env=d["env"],
    )
    d["started"].append(run)
    _after_train_replies(d, NODES[2], 1, timeout=300)
    _crash(nodes[NODES[2]])  # replied in round 1, gone for round 2
    _after_train_replies(d, NODES[1], 2, timeout=300)
    _crash(nodes[NODES[1]])  # replied in round 2, gone for round 3
    assert run.wait(timeout=600) == 0, cli_output(run)[-4000:]
    out = cli_output(run)
    assert "1 skipped" in out

    from mlflow import MlflowClient

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'e2e-deploy'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2]
    (run_id,) = {v.run_id for v in versions}
    path = client.download_artifacts(run_id, "federation/rounds.json", str(d["tmp"]))
    rounds = json.loads(Path(path).read_text())["rounds"]
    assert [r["status"] for r in rounds] == ["completed", "completed", "skipped"]
    assert len(rounds[0]["participants"]) == 3
    assert 2 <= len(rounds[1]["participants"]) <= 3  # 3 only if the test process lagged
    assert len(rounds[2]["participants"]) < 2
    assert rounds[2]["skip_reason"]


def test_coordinator_restart_resumes_the_run(deployment: dict[str, Any]) -> None:
    """Kill the SuperLink and the ServerApp once round 1 is checkpointed, start the coordinator
    again on the same database, resume the MLflow run: every round runs once, nothing is
    counted twice. (Rounds take 1–3 s, so the federation is long enough for the crash to
    land mid-run wherever exactly it lands.)"""
    import re

    from procs import stop_by_marker

    d = deployment
    connected_nodes(d)
    cfg = fed_config(
        d,
        rounds=10,
        extra="""
[strategy]
fraction_evaluate = 0.0
""",
    )
    kit = str(d["kits"] / "coordinator")
    address = f"127.0.0.1:{d['port']}"
    run = start_cli(
        ["run", str(cfg), "--coordinator", address, "--kit", kit], cwd=d["tmp"], env=d["env"]
    )
    d["started"].append(run)
    wait_for(run, "round 1:", timeout=300)
    run_id = re.search(r"MLflow run (\w+)", cli_output(run))
    assert run_id is not None
    from mlflow import MlflowClient

    from federator.server.federation.checkpoint import CHECKPOINT_TAG

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    deadline = time.monotonic() + 120
    while CHECKPOINT_TAG not in client.get_run(run_id.group(1)).data.tags:
        assert time.monotonic() < deadline, "round 1 was never checkpointed"
        time.sleep(0.5)
    # A crash of the coordinator's machine: every process of it, at once.
    coordinator = d["coordinator"]
    os.killpg(coordinator.pid, signal.SIGKILL)
    for pid in re.findall(r"pid (\d+)", cli_output(coordinator)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
    stop_by_marker("flwr-serverapp", f"127.0.0.1:{d['port']}", grace=10)
    stop_by_marker("flower-superexec", f"127.0.0.1:{d['port']}", grace=10)
    coordinator.wait(timeout=30)
    assert run.wait(timeout=120) != 0  # the submitter sees the run did not complete

    again = start_cli(["coordinator", "start", "--kit", kit], cwd=d["tmp"], env=d["env"])
    d["started"].append(again)
    wait_for(again, "ready", timeout=120)
    resumed = run_cli(
        "run",
        str(cfg),
        "--coordinator",
        address,
        "--kit",
        kit,
        "--resume",
        run_id.group(1),
        cwd=d["tmp"],
        env=d["env"],
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    versions = client.search_model_versions("name = 'e2e-deploy'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == list(range(1, 11))
    assert {v.run_id for v in versions} == {run_id.group(1)}
    history = client.get_metric_history(run_id.group(1), "val/accuracy")
    assert sorted(m.step for m in history) == list(range(11))  # each round logged once


def test_a_returning_node_takes_part_again_and_gets_the_champion(
    deployment: dict[str, Any],
) -> None:
    """A node killed after round 1 comes back with the same kit and state while the
    federation goes on: it trains in later rounds and ends with the champion installed."""
    import json

    d = deployment
    nodes = connected_nodes(d)
    kit = d["kits"] / "coordinator"
    cfg = fed_config(
        d,
        rounds=12,
        extra=f"""
[strategy]
min_available_nodes = 2
min_replies = 2
round_timeout = 20.0
fraction_evaluate = 0.0
[gate]
threshold = 0.3
[release]
signing_key = "{kit / "release.key"}"
""",
    )
    run = start_cli(
        ["run", str(cfg), "--coordinator", f"127.0.0.1:{d['port']}", "--kit", str(kit)],
        cwd=d["tmp"],
        env=d["env"],
    )
    d["started"].append(run)
    returning = NODES[2]
    _after_train_replies(d, returning, 1, timeout=300)
    _crash(nodes[returning])
    # Round 2 waits (up to its timeout) for the dead node; it comes back meanwhile. Its old
    # session (last heartbeat < 5 s ago) is still open, so the SuperLink refuses it at first.
    back = wait_for(start_node(d, returning, port=free_port()), "connected:", timeout=90)
    assert "previous session" in back, back
    assert run.wait(timeout=600) == 0, cli_output(run)[-4000:]

    from mlflow import MlflowClient

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'e2e-deploy'")
    (run_id,) = {v.run_id for v in versions}
    path = client.download_artifacts(run_id, "federation/rounds.json", str(d["tmp"]))
    rounds = json.loads(Path(path).read_text())["rounds"]
    counts = [len(r["participants"]) for r in rounds]
    assert counts[0] == 3
    assert min(counts) == 2  # a round without it
    assert counts[-1] == 3, counts  # and back in
    champion = client.get_registered_model("e2e-deploy").aliases["champion"]
    current = d["kits"] / "nodes" / returning / "state" / "models" / "current"
    assert current.is_symlink(), f"{returning} installed no release after coming back"
    assert Path(os.readlink(current)).name == str(champion)
