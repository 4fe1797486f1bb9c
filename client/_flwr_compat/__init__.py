"""The node's side of Flower's internals, in quarantine — and the way to do without them.

Everything on the node that imports a private Flower name or changes a Flower module lives in
this package, and nowhere else (``tests/unit/test_architecture.py`` checks). Each piece saves
seconds per message on flwr 1.42 and each has a stock fallback: ``federator node start
--stock-flower`` runs Flower's own ``flower-supernode`` and ``flower-superexec``, untouched.

=================  ===========================================  ===============================
piece              Flower internals it drives                    stock Flower instead
=================  ===========================================  ===============================
`node_loop`        ``flower_supernode._parse_supernode_…``,      pulls every 3 s; replies
                   ``_start_supernode_http_api``,                checked every 0.5 s; a missing
                   ``start_client_internal._init_connection``,   message part waits 1 s, 2 s …
                   ``_pull_and_store_message``,
                   ``_push_messages``; the order in which they
                   call ``NodeState.create_task`` / reads
                   replies
heartbeat          ``HEARTBEAT_DEFAULT_INTERVAL`` of             announces 30 s: a crashed node
(`node_loop`)      ``fleet_http_connection`` and                 is readmitted after 60 s
                   ``supercore.heartbeat``, set to 10 s          (instead of 20 s)
`warm_exec`        ``flwr_clientapp`` run in a forked child;     a fresh ``flwr-clientapp``
                   ``run_superexec``'s loop re-implemented       process per message (imports
                   with Flower's ``AutoExecPlugin``              torch: 2–5 s each)
=================  ===========================================  ===============================

Upgrading Flower: ``tests/unit/test_flwr_compat_client.py`` runs these pieces against the
installed flwr's real objects (its node state, object store, message serialisation); when it
fails, fix the piece or start nodes with ``--stock-flower`` until it is fixed. Upstream:
Flower made SuperExec's task polling configurable after 1.42 (flwrlabs/flower#8041); the
SuperNode's pull interval and heartbeat are still hard-coded there.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from federator.client._flwr_compat.node_loop import HEARTBEAT_INTERVAL, PULL_INTERVAL
from federator.client.processes import flower_command

STOCK_HEARTBEAT_INTERVAL = 30.0  # seconds a stock SuperNode announces (flwr 1.42)
STOCK_PULL_INTERVAL = 3.0  # seconds a stock SuperNode waits after an empty pull (flwr 1.42)


class NodeRuntime(StrEnum):
    """Which SuperNode and ClientApp executor a node runs."""

    FEDERATOR = "federator"  # our pull loop and fork server (the default)
    STOCK = "stock"  # Flower's own flower-supernode and flower-superexec


@dataclass(frozen=True, kw_only=True)
class NodeCommands:
    """The two processes of a node and what the SuperLink will see of them."""

    supernode: list[str]
    executor: list[str]
    heartbeat_interval: float  # seconds the SuperNode announces
    pull_interval: float  # seconds between its empty pulls


def node_commands(
    runtime: NodeRuntime,
    *,
    flower_args: Sequence[str],
    port: int,
    pull_interval: float | None,
    parent_pid: int,
) -> NodeCommands:
    """The command lines of a node's SuperNode (``--isolation process`` plus Flower's own
    ``flower_args``) and of the executor serving its ClientApp API on ``port``.

    ``pull_interval`` (None: the default) applies to Federator's loop only: stock Flower's
    interval is fixed, so asking for one with `NodeRuntime.STOCK` is a `ValueError`."""
    executor_args = ["--runtime-api-address", f"127.0.0.1:{port}", "--parent-pid", str(parent_pid)]
    common = ["--isolation", "process", "--port", str(port), *flower_args]
    if runtime is NodeRuntime.STOCK:
        if pull_interval is not None:
            raise ValueError(
                f"a pull interval ({pull_interval:g} s) needs Federator's node loop: stock "
                f"Flower pulls every {STOCK_PULL_INTERVAL:g} s"
            )
        return NodeCommands(
            supernode=[flower_command("flower-supernode"), *common],
            # the Runtime API is the node's own loopback port, plaintext as in Federator's loop
            executor=[flower_command("flower-superexec"), "--insecure", *executor_args],
            heartbeat_interval=STOCK_HEARTBEAT_INTERVAL,
            pull_interval=STOCK_PULL_INTERVAL,
        )
    interval = PULL_INTERVAL if pull_interval is None else pull_interval
    python = [sys.executable, "-m"]
    return NodeCommands(
        supernode=[*python, f"{__name__}.node_loop", "--pull-interval", str(interval), *common],
        executor=[*python, f"{__name__}.warm_exec", *executor_args],
        heartbeat_interval=HEARTBEAT_INTERVAL,
        pull_interval=interval,
    )


__all__ = [
    "HEARTBEAT_INTERVAL",
    "PULL_INTERVAL",
    "NodeCommands",
    "NodeRuntime",
    "node_commands",
]
