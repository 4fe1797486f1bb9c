"""`federator node start`: a partner's Flower SuperNode, with its kit and its own data.

Everything is checked before anything starts: the kit (certificates valid, key private, kit of
the expected federation), the data (readable; of the right shape when the policy names the
tasks it allows), the policy file. The SuperNode then dials the coordinator over TLS,
authenticated by the node's provisioned key; its ClientApp trains on ``--data`` only, and keeps
its privacy ledger and installed models under the node's state folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from federator import DataError
from federator.client._node_loop import PULL_INTERVAL
from federator.client._processes import (
    ManagedProcess,
    flower_env,
    launch,
    node_config_string,
)
from federator.client.local_data import load_node_data
from federator.client.node_policy import NodePolicy, load_policy
from federator.client.tasks import resolve_task
from federator.server.kits import NodeKit


@dataclass(frozen=True, kw_only=True)
class NodeStart:
    """What `start_node` checked, for the start-up report."""

    examples: int
    example_shape: tuple[int, ...]
    policy: NodePolicy | None


def check_node(kit: NodeKit, *, data: Path, policy: Path | None) -> NodeStart:
    """Everything `start_node` refuses on, without starting anything."""
    rules = load_policy(policy) if policy is not None else None
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    shapes: list[tuple[int, ...]] = []
    if rules is not None and rules.allowed_tasks:
        shapes = [resolve_task(t).input_shape for t in sorted(rules.allowed_tasks)]
    if shapes:
        errors = []
        for shape in shapes:
            try:
                loaded = load_node_data(data, input_shape=shape, val_fraction=0.0)
            except DataError as err:
                errors.append(str(err))
                continue
            return NodeStart(
                examples=len(loaded.train),
                example_shape=loaded.train.example_shape,
                policy=rules,
            )
        raise DataError("; ".join(errors))
    loaded = load_node_data(data, input_shape=None, val_fraction=0.0)
    return NodeStart(
        examples=len(loaded.train), example_shape=loaded.train.example_shape, policy=rules
    )


@dataclass(frozen=True, kw_only=True)
class RunningNode:
    """A started node: Flower's SuperNode (``--isolation process``, driven by our pull loop,
    `federator.client._node_loop`) and the executor that runs its ClientApps, each in its own
    process group.

    The executor forks every message's ClientApp process from a parent that has already
    imported torch and Federator: a round does not wait for those imports (see
    `federator.client._warm_exec`)."""

    supernode: ManagedProcess
    executor: ManagedProcess

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.supernode, self.executor]

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def start_node(
    kit: NodeKit,
    *,
    data: Path,
    state: Path,
    policy: Path | None = None,
    superlink: str | None = None,
    port: int = 9094,
    model: str | None = None,
    pull_interval: float = PULL_INTERVAL,
) -> RunningNode:
    """Start this node's SuperNode and its ClientApp executor (call `check_node` first to
    report what it found).

    ``superlink`` overrides the kit's coordinator address (e.g. a tunnel); ``port`` is the
    SuperNode's local ClientApp API port (each node on a machine needs its own); ``model`` is
    the registered model whose releases this node installs (default: the federation's name);
    ``pull_interval`` is how often the SuperNode asks the coordinator for a message (Flower's
    own SuperNode waits 3 s; see `federator.client._node_loop`).
    """
    state.mkdir(parents=True, exist_ok=True)
    node_config: dict[str, str | int | float] = {
        "name": kit.node,
        "data": str(data.resolve()),
        "privacy-ledger": str((state / "privacy-ledger.json").resolve()),
        "store": str((state / "models").resolve()),
        "pinned-key": str(kit.release_pub.resolve()),
        "model": model or kit.federation,
    }
    if policy is not None:
        node_config["policy"] = str(policy.resolve())
    argv = [
        sys.executable,
        "-m",
        "federator.client._node_loop",  # Flower's SuperNode, pulling every `pull_interval` s
        "--pull-interval",
        str(pull_interval),
        "--isolation",
        "process",  # ClientApp processes come from our fork server (`_warm_exec`)
        "--root-certificates",
        str(kit.ca_cert),
        "--superlink",
        superlink or kit.coordinator,
        "--auth-supernode-private-key",
        str(kit.node_key),
        "--port",
        str(port),
        "--node-config",
        node_config_string(node_config),
    ]
    supernode = launch("supernode", argv, log=state / "supernode.log", env=flower_env())
    executor = launch(
        "ClientApp executor",
        [
            sys.executable,
            "-m",
            "federator.client._warm_exec",
            "--runtime-api-address",
            f"127.0.0.1:{port}",
            "--parent-pid",
            str(os.getpid()),
        ],
        log=state / "superexec.log",
        env=flower_env(),
    )
    return RunningNode(supernode=supernode, executor=executor)


__all__ = ["NodeStart", "RunningNode", "check_node", "start_node"]
