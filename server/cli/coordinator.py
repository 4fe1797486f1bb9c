"""``federator coordinator start`` and ``federator run`` (registered by `register`).

federator coordinator start --kit DIR [--host H] [--port P] [--state DIR]
federator run CONFIG --coordinator ADDR --kit DIR [--rounds N ...]
federator bundle CONFIG           the task bundle `run` would send, and how partners pin it
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federator import DeploymentError

if TYPE_CHECKING:
    from federator.client.bundle import TaskBundle
    from federator.server.plan.overrides import Override

out = Console()
coordinator_app = typer.Typer(no_args_is_help=True, help="The coordinator's SuperLink.")

KitOpt = Annotated[Path, typer.Option("--kit", help="The coordinator kit (from provision).")]


@coordinator_app.command("start")
def coordinator_start(
    kit: KitOpt,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. Default 127.0.0.1: the Control API shares this port, so "
            "expose it (e.g. 0.0.0.0) only behind a firewall that admits the partner nodes.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: the kit's address).")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Database, logs, FLWR_HOME (default: KIT/state)."),
    ] = None,
) -> None:
    """Start the SuperLink (TLS, node authentication, persistent database), register the
    federation's node keys, and run until Ctrl-C."""
    from federator.client.actions import run_action
    from federator.client.processes import supervise
    from federator.server.deploy.coordinator import start_coordinator
    from federator.server.deploy.kits import load_coordinator_kit

    def go() -> None:
        coordinator_kit = load_coordinator_kit(kit)
        folder = state or kit / "state"
        out.print(f"starting the SuperLink for {coordinator_kit.federation!r} …")
        running = start_coordinator(coordinator_kit, state=folder, host=host, port=port)
        table = Table(
            title=f"Coordinator for {coordinator_kit.federation!r}",
            show_header=False,
            title_justify="left",
        )
        table.add_column(style="bold")
        table.add_column()
        table.add_row("listening", f"{running.address} (TLS; nodes need a registered key)")
        table.add_row("nodes registered", ", ".join(running.registered))
        table.add_row("database", str(folder / "superlink.db"))
        table.add_row("log", str(running.process.log))
        table.add_row("SuperLink", f"pid {running.process.pid}")
        table.add_row(
            "submit a run",
            f"federator run CONFIG --coordinator {running.address} --kit {kit}",
        )
        out.print(table)
        out.print("[green]ready[/]: Ctrl-C stops the coordinator")
        out.file.flush()  # a supervisor reading our output must see this now
        supervise([running.process])
        out.print("coordinator stopped")

    run_action(go)


def run_command(
    config: Annotated[str, typer.Argument(help="The federation config (as for simulate).")],
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="The SuperLink's address, host:port.")
    ],
    kit: KitOpt,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Override rounds.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any key: section.key=value.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue this MLflow run after its last checkpoint (e.g. after a coordinator "
            "restart; same config).",
        ),
    ] = None,
    stock_flower: Annotated[
        bool,
        typer.Option(
            "--stock-flower",
            help="Use none of Federator's Flower patches in this run (slower pulls; SecAgg+ "
            "aborts on an early dropout): for when a Flower upgrade breaks them.",
        ),
    ] = False,
) -> None:
    """Submit CONFIG to a running coordinator and stream its progress until it ends."""
    from federator.client.actions import run_action
    from federator.server.cli import _overrides

    def go() -> None:
        overrides = _overrides(rounds, None, None, None, set_)
        submit(
            config, coordinator=coordinator, kit=kit, overrides=overrides, resume=resume,
            stock_flower=stock_flower,
        )  # fmt: skip

    run_action(go)


def submit(
    config: str,
    *,
    coordinator: str,
    kit: Path,
    overrides: list[Override],
    resume: str | None = None,
    stock_flower: bool = False,
) -> None:
    """``federator run``'s work: CONFIG (with ``overrides``) and its task bundle submitted to
    the coordinator of ``kit``, streamed until it ends; `DeploymentError` unless it completed."""
    from federator.server.deploy.kits import load_coordinator_kit
    from federator.server.deploy.manifest import NODES_DIR
    from federator.server.deploy.submit import submit_run

    coordinator_kit = load_coordinator_kit(kit)
    raw, bundle = _bundle(config, overrides)
    state = kit / "state"
    state.mkdir(parents=True, exist_ok=True)
    status = submit_run(
        raw,
        coordinator=coordinator,
        ca_cert=coordinator_kit.ca_cert,
        federation=coordinator_kit.federation,
        state=state,
        resume=resume,
        stock_flower=stock_flower,
        bundle=bundle,
        node_keys=coordinator_kit.folder / NODES_DIR,
    )
    if status != "finished:completed":
        raise DeploymentError(f"the run on {coordinator} ended {status!r}; see its log above")


def _bundle(config: str, overrides: list[Override]) -> tuple[dict[str, Any], TaskBundle | None]:
    """CONFIG as it will be submitted, and the signed bundle of its task (None: a built-in),
    shown in a table."""
    from federator.server.cli import _import_path_for
    from federator.server.deploy.bundle import describe, pack_task
    from federator.server.deploy.submit import submitted_config
    from federator.server.plan import resolve_config_path

    _import_path_for(config)  # a task module next to the config is found, as in simulate
    path = resolve_config_path(config)
    plan, raw = submitted_config(path, overrides=overrides)
    bundle = pack_task(plan, raw, config=path)
    if bundle is not None:
        table = Table(title="task bundle (signed with the release key)", show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for row in describe(bundle):
            table.add_row(*row)
        out.print(table)
    return raw, bundle


def bundle_command(
    config: Annotated[str, typer.Argument(help="The federation config (as for run).")],
) -> None:
    """Pack and sign CONFIG's task as `run` would, and show its digest and how partners
    pin it in their node policy; nothing is submitted."""
    from federator.client.actions import run_action

    def go() -> None:
        if _bundle(config, [])[1] is None:
            out.print("the task is a built-in: nothing to bundle, every node has it")

    run_action(go)


def register(app: typer.Typer) -> None:
    """Add ``coordinator …``, ``run`` and ``bundle`` to the ``federator`` app."""
    app.add_typer(coordinator_app, name="coordinator")
    app.command("run")(run_command)
    app.command("bundle")(bundle_command)


__all__ = ["coordinator_app", "register", "run_command"]
