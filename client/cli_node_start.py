"""``federator node start --kit DIR --data PATH``: run this partner's node until stopped.

Registered on the ``federator node`` command group by `federator.client.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from federator.client._flwr_compat import PULL_INTERVAL, NodeRuntime

if TYPE_CHECKING:
    from federator.client.kit import NodeKit
    from federator.client.supernode import NodeStart, RunningNode

out = Console()


def node_start(
    kit: Annotated[Path, typer.Option("--kit", help="This node's kit folder (from provision).")],
    data: Annotated[
        Path, typer.Option("--data", help="This node's data: a .npz, a .csv or an image folder.")
    ],
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="This node's policy file (max ε, allowed runs)."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Ledger, installed models and logs (default: KIT/state)."),
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="Coordinator address (default: the kit's)."),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="Local port for this node's ClientApp API.")
    ] = 9094,
    pull_interval: Annotated[
        float | None,
        typer.Option(
            "--pull-interval",
            min=0.05,
            max=60.0,
            help=f"Seconds between this node's requests for work [default: {PULL_INTERVAL:g}; "
            "Flower's own SuperNode: 3].",
        ),
    ] = None,
    stock_flower: Annotated[
        bool,
        typer.Option(
            "--stock-flower",
            help="Run Flower's own SuperNode and SuperExec, none of Federator's speed-ups "
            "(slower rounds; for when a Flower upgrade breaks them).",
        ),
    ] = False,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to wait for the coordinator.")
    ] = 120.0,
) -> None:
    """Check the kit, data and policy, then run this node's SuperNode until Ctrl-C."""
    from federator.client.actions import run_action
    from federator.client.kit import load_node_kit
    from federator.client.local_data import load_node_data
    from federator.client.processes import supervise
    from federator.client.serving.monitor import write_reference
    from federator.client.supernode import admit, check_node, start_node

    def go() -> None:
        node_kit = load_node_kit(kit)
        folder = state or kit / "state"
        found = check_node(node_kit, data=data, policy=policy, state=folder)
        reference, _ = write_reference(
            load_node_data(data, input_shape=None, val_fraction=0.0).train,
            folder / "models",
            rng=np.random.default_rng(),
        )
        node = start_node(
            node_kit,
            data=data,
            state=folder,
            policy=policy,
            superlink=superlink,
            port=port,
            pull_interval=pull_interval,
            runtime=NodeRuntime.STOCK if stock_flower else NodeRuntime.FEDERATOR,
        )
        out.print(
            _start_table(
                node_kit,
                node,
                data=data,
                found=found,
                policy=policy,
                state=folder,
                superlink=superlink,
                reference=reference,
            )
        )
        out.print(f"connecting to {superlink or node_kit.coordinator} …")
        out.file.flush()
        node = admit(node, timeout=connect_timeout, on_retry=lambda why: out.print(f"… {why}"))
        out.print("[green]connected[/]: waiting for runs (Ctrl-C stops the node)")
        out.file.flush()  # a supervisor reading our output must see this now
        supervise(node.processes)
        out.print("node stopped")

    run_action(go)


def _start_table(
    kit: NodeKit,
    node: RunningNode,
    *,
    data: Path,
    found: NodeStart,
    policy: Path | None,
    state: Path,
    superlink: str | None,
    reference: Path,
) -> Table:
    """What the node checked and started, before it connects."""
    table = Table(title=f"Node {kit.node!r}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    stock = " (stock Flower)" if node.runtime is NodeRuntime.STOCK else ""
    for row in (
        ("federation", kit.federation),
        ("coordinator", superlink or kit.coordinator),
        ("data", f"{data} — {found.examples} examples of shape {found.example_shape}"),
        ("policy", str(policy) if policy else "none (any run; no privacy limit)"),
        ("state", f"{state} (ledger, models, supernode.log)"),
        ("drift reference", f"{reference} (for federator node serve)"),
        (
            "SuperNode",
            f"pid {node.supernode.pid}, asks for work every {node.pull_interval:g} s{stock}",
        ),
        ("ClientApp executor", f"pid {node.executor.pid}"),
    ):
        table.add_row(*row)
    return table


__all__ = ["node_start"]
