"""`federator coordinator start`: a Flower SuperLink with TLS, node authentication and a
persistent database, with the federation's provisioned node keys registered.

The SuperLink serves the Fleet API (nodes), the Control API (``flwr run``, node registration)
and the Runtime API on one port. Whoever reaches the Control API can register nodes and
start runs, so the coordinator binds 127.0.0.1 unless told otherwise (``--host``): expose it
only behind a firewall that admits the partner nodes (see docs/deployment.md).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from federator import DeploymentError
from federator.client.processes import (
    ManagedProcess,
    flower_command,
    flower_env,
    launch,
)
from federator.server.deploy.kits import CoordinatorKit


def write_flwr_home(home: Path, *, federation: str, address: str, ca_cert: Path) -> Path:
    """A ``FLWR_HOME`` whose only SuperLink connection is ``federation`` at ``address``
    (TLS, verified against ``ca_cert``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{federation}"\n\n'
        f'[superlink.{federation}]\naddress = "{address}"\n'
        f'root-certificates = "{ca_cert.resolve()}"\n'
    )
    return home


def flwr_cli(
    args: list[str], *, home: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run Flower's ``flwr`` command against the SuperLink configured in ``home``."""
    return subprocess.run(
        [flower_command("flwr"), *args],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Coordinator:
    """A running SuperLink and what a user needs to reach it."""

    kit: CoordinatorKit
    process: ManagedProcess
    address: str
    flwr_home: Path
    registered: tuple[str, ...]

    def stop(self) -> int | None:
        return self.process.stop()


def _wait_healthy(
    proc: ManagedProcess,
    home: Path,
    federation: str,
    timeout: float,
    sleep: Callable[[float], None],
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise DeploymentError(f"the SuperLink exited at start-up:\n{proc.tail()}")
        probe = flwr_cli(["supernode", "list", federation], home=home, timeout=30)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            proc.stop()
            raise DeploymentError(
                f"the SuperLink did not answer within {timeout:.0f} s:\n{probe.stdout[-800:]}"
                f"{probe.stderr[-800:]}\n{proc.tail()}"
            )
        sleep(1.0)


def _register(kit: CoordinatorKit, home: Path) -> tuple[str, ...]:
    done = []
    for node in kit.nodes:
        result = flwr_cli(
            ["supernode", "register", str(node.public_key), kit.federation], home=home
        )
        text = result.stdout + result.stderr
        if result.returncode != 0 and "already" not in text.lower():
            raise DeploymentError(f"registering node {node.name!r} failed:\n{text[-1500:]}")
        done.append(node.name)
    return tuple(done)


def start_coordinator(
    kit: CoordinatorKit,
    *,
    state: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout: float = 90.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Coordinator:
    """Start the SuperLink for ``kit``, wait until it answers, register every node key.

    ``state`` keeps the SuperLink's database (runs and registered nodes survive a restart),
    its log and the ``FLWR_HOME`` used to talk to it. On any failure nothing is left running.
    """
    state.mkdir(parents=True, exist_ok=True)
    port = port or kit.port
    home = write_flwr_home(
        state / "flwr",
        federation=kit.federation,
        address=f"127.0.0.1:{port}",
        ca_cert=kit.ca_cert,
    )
    argv = [
        flower_command("flower-superlink"),
        "--ssl-ca-certfile",
        str(kit.ca_cert),
        "--ssl-certfile",
        str(kit.server_cert),
        "--ssl-keyfile",
        str(kit.server_key),
        "--enable-supernode-auth",
        "--database",
        str(state / "superlink.db"),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    proc = launch("superlink", argv, log=state / "superlink.log", env=flower_env(home))
    try:
        _wait_healthy(proc, home, kit.federation, timeout=timeout, sleep=sleep)
        registered = _register(kit, home)
    except BaseException:
        proc.stop()
        raise
    return Coordinator(
        kit=kit,
        process=proc,
        address=f"{host}:{port}",
        flwr_home=home,
        registered=registered,
    )


__all__ = ["Coordinator", "flwr_cli", "start_coordinator", "write_flwr_home"]
