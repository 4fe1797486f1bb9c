"""Provisioned kits work with the real Flower 1.42 SuperLink and SuperNode.

`federator provision` makes the kits; a `flower-superlink` serves TLS with the coordinator kit
and requires node authentication; the coordinator registers a node's key with
`flwr supernode register`. Then: the registered node (its own kit) comes online; a node whose
key was not registered, and a node trusting another federation's CA, are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import BIN, child_env, free_port, run_cli, stop

from federator.server import load_coordinator_kit, load_node_kit

pytestmark = pytest.mark.integration


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        stop(proc)


def _start(args: list[str], log: Path, started: list[subprocess.Popen[bytes]]) -> None:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        started.append(
            subprocess.Popen(
                ["nice", "-n", "15", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                start_new_session=True,
            )
        )


def _flwr(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args],
        env=child_env(FLWR_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _refused(args: list[str], log: Path) -> tuple[int, str]:
    """Run a SuperNode expected to give up; its exit code and log. Its SuperExec child may
    outlive it, so the whole process group is stopped afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "15", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=120)
    finally:
        stop(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    return code, log.read_text(errors="replace")


def _node(kit: Path, superlink: str, *, ca: Path | None = None) -> list[str]:
    return [
        str(BIN / "flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(ca or kit / "ca.crt"),
        "--auth-supernode-private-key",
        str(kit / "node.key"),
        "--port",
        str(free_port()),
    ]


def test_superlink_and_supernodes_accept_provisioned_kits(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    (tmp_path / "fed.toml").write_text(
        f'[federation]\nname = "tls-e2e"\ncoordinator = "localhost:{port}"\n'
        '[[nodes]]\nname = "hospital-a"\n[[nodes]]\nname = "hospital-b"\n'
    )
    for out in ("kits", "other"):
        made = run_cli("provision", "fed.toml", "--out", out, cwd=tmp_path)
        assert made.returncode == 0, made.stdout + made.stderr
    coord = load_coordinator_kit(tmp_path / "kits/coordinator", federation="tls-e2e")
    node_a = load_node_kit(tmp_path / "kits/nodes/hospital-a", federation="tls-e2e")
    node_b = load_node_kit(tmp_path / "kits/nodes/hospital-b", federation="tls-e2e")

    _start(
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(coord.ca_cert),
            "--ssl-certfile",
            str(coord.server_cert),
            "--ssl-keyfile",
            str(coord.server_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database",
            str(tmp_path / "state.db"),
            "--port",
            str(coord.port),
        ],
        tmp_path / "superlink.log",
        procs,
    )
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "tls-e2e"\n\n[superlink.tls-e2e]\n'
        f'address = "127.0.0.1:{coord.port}"\nroot-certificates = "{coord.ca_cert}"\n'
    )
    a_key = dict((k.name, k.public_key) for k in coord.nodes)["hospital-a"]
    deadline = time.monotonic() + 90
    while True:  # the SuperLink takes a few seconds to listen
        registered = _flwr(
            "supernode", "register", str(a_key), "tls-e2e", "--name", "hospital-a", home=home
        )
        if registered.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert registered.returncode == 0, registered.stdout + registered.stderr + log

    # The registered node, dialling the host name its kit names, comes online over TLS.
    _start(_node(node_a.folder, node_a.coordinator), tmp_path / "node-a.log", procs)
    status: list[str] = []
    deadline = time.monotonic() + 90
    while status != ["online"] and time.monotonic() < deadline:
        time.sleep(3)
        listed = _flwr("supernode", "list", "tls-e2e", "--format", "json", home=home)
        if listed.returncode == 0:
            status = [n["status"] for n in json.loads(listed.stdout)["nodes"]]
    assert status == ["online"], (tmp_path / "node-a.log").read_text(errors="replace")

    # A node whose key was never registered is refused (Flower exit code 305).
    code, text = _refused(_node(node_b.folder, node_b.coordinator), tmp_path / "node-b.log")
    assert code != 0
    assert "Exit Code: 305" in text

    # A node trusting another federation's CA refuses the coordinator's certificate.
    other_ca = tmp_path / "other/nodes/hospital-a/ca.crt"
    code, text = _refused(
        _node(node_a.folder, node_a.coordinator, ca=other_ca), tmp_path / "node-wrong-ca.log"
    )
    assert code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in text
