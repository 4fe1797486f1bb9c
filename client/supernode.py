"""`federator node start`: a partner's Flower SuperNode, with its kit and its own data.

Everything is checked before anything starts: the kit (certificates valid, key private, kit of
the expected federation), the data (readable; of the right shape when the policy names the
tasks it allows), the policy file. The SuperNode then dials the coordinator over TLS,
authenticated by the node's provisioned key; its ClientApp trains on ``--data`` only, and keeps
its privacy ledger and installed models under the node's state folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from flwr.common.constant import HEARTBEAT_PATIENCE

from federator import DataError, DeploymentError
from federator.client._flwr_compat import NodeRuntime, node_commands
from federator.client.kit import NodeKit
from federator.client.local_data import load_node_data
from federator.client.node_policy import NodePolicy, load_policy
from federator.client.processes import (
    ManagedProcess,
    flower_env,
    launch,
    node_config_string,
    wait_for_log,
)
from federator.client.store import check_store_state
from federator.client.tasks import resolve_task
from federator.client.wire import NodeConfigKey


@dataclass(frozen=True, kw_only=True)
class NodeStart:
    """What `start_node` checked, for the start-up report."""

    examples: int
    example_shape: tuple[int, ...]
    policy: NodePolicy | None


def check_node(
    kit: NodeKit, *, data: Path, policy: Path | None, state: Path | None = None
) -> NodeStart:
    """Everything `start_node` refuses on, without starting anything (``state``: the node's
    state folder, whose model store must not have lost its replay protection)."""
    if state is not None:
        check_store_state(state / "models")
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
    """A started node: its SuperNode (``--isolation process``) and the executor that runs
    its ClientApps, each in its own process group.

    With `NodeRuntime.FEDERATOR` the SuperNode is driven by our pull loop and the executor
    forks every message's ClientApp process from a parent that has already imported torch
    and Federator; with `NodeRuntime.STOCK` both are Flower's own commands (see
    `federator.client._flwr_compat`)."""

    supernode: ManagedProcess
    executor: ManagedProcess
    runtime: NodeRuntime
    heartbeat_interval: float  # seconds the SuperNode announces to the SuperLink
    pull_interval: float  # seconds between its requests for work

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.supernode, self.executor]

    @property
    def session_expiry(self) -> float:
        """Seconds a crashed node's session stays open at the SuperLink: it waits
        ``HEARTBEAT_PATIENCE`` announced intervals after the last heartbeat."""
        return HEARTBEAT_PATIENCE * self.heartbeat_interval

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
    pull_interval: float | None = None,
    runtime: NodeRuntime = NodeRuntime.FEDERATOR,
) -> RunningNode:
    """Start this node's SuperNode and its ClientApp executor (call `check_node` first to
    report what it found).

    ``superlink`` overrides the kit's coordinator address (e.g. a tunnel); ``port`` is the
    SuperNode's local ClientApp API port (each node on a machine needs its own); ``model`` is
    the registered model whose releases this node installs (default: the federation's name);
    ``pull_interval`` is how often the SuperNode asks the coordinator for a message (default
    0.2 s; Flower's own SuperNode waits 3 s and cannot be told otherwise); ``runtime`` picks
    Federator's fast SuperNode loop or stock Flower. `DeploymentError` for a pull interval
    with stock Flower.
    """
    state.mkdir(parents=True, exist_ok=True)
    try:
        commands = node_commands(
            runtime,
            flower_args=_flower_args(
                kit, data=data, state=state, policy=policy, superlink=superlink, model=model
            ),
            port=port,
            pull_interval=pull_interval,
            parent_pid=os.getpid(),
        )
    except ValueError as err:
        raise DeploymentError(f"--pull-interval: {err}") from None
    supernode = launch(
        "supernode", commands.supernode, log=state / "supernode.log", env=flower_env()
    )
    executor = launch(
        "ClientApp executor", commands.executor, log=state / "superexec.log", env=flower_env()
    )
    return RunningNode(
        supernode=supernode,
        executor=executor,
        runtime=runtime,
        heartbeat_interval=commands.heartbeat_interval,
        pull_interval=commands.pull_interval,
    )


def _flower_args(
    kit: NodeKit,
    *,
    data: Path,
    state: Path,
    policy: Path | None,
    superlink: str | None,
    model: str | None,
) -> list[str]:
    """Flower's SuperNode arguments: TLS to the coordinator, the node's key, its node config."""
    node_config: dict[str, str | int | float] = {
        NodeConfigKey.NAME: kit.node,
        NodeConfigKey.IDENTITY_KEY: str(kit.node_key.resolve()),
        NodeConfigKey.DATA: str(data.resolve()),
        NodeConfigKey.PRIVACY_LEDGER: str((state / "privacy-ledger.json").resolve()),
        NodeConfigKey.STORE: str((state / "models").resolve()),
        NodeConfigKey.PINNED_KEY: str(kit.release_pub.resolve()),
        NodeConfigKey.MODEL: model or kit.federation,
    }
    if policy is not None:
        node_config[NodeConfigKey.POLICY] = str(policy.resolve())
    return [
        "--root-certificates",
        str(kit.ca_cert),
        "--superlink",
        superlink or kit.coordinator,
        "--auth-supernode-private-key",
        str(kit.node_key),
        "--node-config",
        node_config_string(node_config),
    ]


ADMITTED = "SuperNode ID"  # what our SuperNode loop logs once the coordinator let it in
# Flower's SuperLink answers an activation it refuses with this code, both for a key it does
# not know and for a key whose previous session is still open: the node cannot tell which.
ACTIVATION_REFUSED = "[code: 2004]"  # flwr ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED
RETRY_AFTER = 2.0  # seconds between admission attempts while an old session expires


def admit(
    node: RunningNode,
    *,
    timeout: float,
    on_retry: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunningNode:
    """Wait until the coordinator has admitted ``node``'s SuperNode; return the running node.

    A node that crashed and comes back within its `RunningNode.session_expiry` s of its last
    heartbeat is refused: Flower's SuperLink activates a key only once its previous session
    has expired, and refuses a key it does not know with the same error. So while refused
    that way, we start the SuperNode again every `RETRY_AFTER` s (calling ``on_retry`` with
    why) for up to that expiry plus one retry — an unknown key is then reported as such. Any
    other failure (wrong CA, coordinator unreachable) raises at once; nothing waits past
    ``timeout`` s.
    """
    start = clock()
    deadline = start + timeout
    give_up_refusals = start + node.session_expiry + 2 * RETRY_AFTER
    while True:
        proc = node.supernode
        if wait_for_log(proc, ADMITTED, timeout=max(0.0, deadline - clock()), sleep=sleep):
            return node
        refused = not proc.alive() and ACTIVATION_REFUSED in proc.output()
        now = clock()
        if not refused or now + RETRY_AFTER >= min(deadline, give_up_refusals):
            node.stop()
            why = (
                "its key is not registered with the coordinator, or a previous session of "
                "this node is still open there"
                if refused
                else "wrong CA, or coordinator down?"
            )
            raise DeploymentError(
                f"this node was not admitted by the coordinator within {now - start:.0f} s "
                f"({why}):\n{proc.tail()}"
            )
        on_retry(
            "the coordinator refused this node's key: if this node was running until "
            f"recently, its previous session ends {node.session_expiry:.0f} s after its last "
            "heartbeat; trying again"
        )
        sleep(RETRY_AFTER)
        node = replace(node, supernode=proc.relaunch(env=flower_env()))


__all__ = ["NodeStart", "RunningNode", "admit", "check_node", "start_node"]
