"""The ``federator`` command.

    federator simulate CONFIG     run a federation locally on Flower's Simulation Engine
    federator validate CONFIG     check a config and print the resolved plan (starts nothing)
    federator models list CONFIG  the registry's versions with their gate decisions
    federator strategies          the aggregation strategies and the papers they implement
    federator provision FILE      per-party deployment kits (see server/cli/deploy.py)
    federator monitor CONFIG      what each node's model service reported (drift, fall-backs)

CONFIG is a path or the name of a bundled example (``federator validate demo``). Errors are
printed as one readable message; the exit code is 2 for a bad config and 1 for anything else
Federator refuses.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from federator import __version__
from federator.client.actions import run_action
from federator.client.cli import keys_app, node_app
from federator.server.cli.coordinator import register as register_coordinator
from federator.server.cli.deploy import register as register_deploy
from federator.server.cli.monitor import register as register_monitor
from federator.server.plan.overrides import Override, parse_override

if TYPE_CHECKING:
    from federator.server.plan import FederationPlan
    from federator.server.plan.datacheck import DataReport

Row = tuple[str, str]  # a label and its text in the plan table

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Federator: federated learning with MLflow lineage and a release gate.",
)
models_app = typer.Typer(no_args_is_help=True, help="Inspect registered model versions.")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(node_app, name="node")
register_deploy(app)
register_coordinator(app)
register_monitor(app)

out = Console()


ConfigArg = Annotated[
    str,
    typer.Argument(
        help="federation.toml path, or a bundled example name (demo, digits-mlp, mnist-cnn, ...)"
    ),
]
RoundsOpt = Annotated[int | None, typer.Option("--rounds", help="Override federation.rounds.")]
ClientsOpt = Annotated[int | None, typer.Option("--clients", help="Override data.clients.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override federation.seed.")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="Override tracking.uri.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any key: --set strategy.fraction_train=0.5 (repeatable)."),
]


def _overrides(
    rounds: int | None,
    clients: int | None,
    seed: int | None,
    uri: str | None,
    sets: list[str] | None,
) -> list[Override]:
    out_: list[Override] = []
    for flag, path, value in (
        ("--rounds", "federation.rounds", rounds),
        ("--clients", "data.clients", clients),
        ("--seed", "federation.seed", seed),
        ("--tracking-uri", "tracking.uri", uri),
    ):
        if value is not None:
            out_.append(Override(tuple(path.split(".")), value, f"{flag} {value}"))
    out_ += [parse_override(s) for s in sets or []]
    return out_


def _quiet_libraries(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow imports
    level = logging.INFO if verbose else logging.WARNING
    for name in ("mlflow", "alembic", "ray", "flwr"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        # Library deprecation chatter (SQLAlchemy via MLflow, Ray) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*noload.*")


def _import_path_for(config: str) -> None:
    """Put the config's folder on the import path (here and for simulated clients), so a task
    or dataset module kept next to the config is found without installing it.

    A folder that is itself a Python package (such as Federator's own ``simulations/``, home
    of the bundled examples) is not added: its modules would shadow installed packages
    (``simulations/datasets.py`` vs Hugging Face's ``datasets``). The folder goes last on
    ``sys.path`` for the same reason.
    """
    path = Path(config)
    if not path.is_file():
        return  # a bundled example: nothing of the user's to import
    folder = path.resolve().parent
    if (folder / "__init__.py").exists():
        return
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    current = os.environ.get("PYTHONPATH", "")
    if str(folder) not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (current, str(folder)) if p)


def _plan_table(plan_ref: str, overrides: list[Override]) -> Table:
    from federator.server.plan import load_plan
    from federator.server.plan.datacheck import check_data

    plan = load_plan(plan_ref, overrides=overrides)
    report = check_data(plan)
    table = Table(
        title=f"Plan for federation {plan.name!r}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column()
    trains = sorted(size for size, _ in report.client_sizes)
    for row in (*_data_rows(plan, report, trains), *_round_rows(plan, trains)):
        table.add_row(*row)
    return table


def _data_rows(plan: FederationPlan, report: DataReport, trains: list[int]) -> list[Row]:
    """Where the plan comes from, its task, and how the data is split."""
    d = plan.data
    split = {
        "iid": "IID",
        "dirichlet": f"Dirichlet α={d.alpha}",
        "shards": f"{d.shards_per_client} label shards per client",
    }[d.partitioner.value]
    return [
        ("source", f"{plan.source} (config hash {plan.config_hash[:12]})"),
        (
            "task",
            f"{plan.task_ref}: dataset {d.dataset} — {report.examples} examples "
            f"of shape {report.example_shape}, {report.classes} classes",
        ),
        (
            "data split",
            f"{split} over {d.clients} clients; server hold-out "
            f"{report.holdout} examples; client train sizes min "
            f"{trains[0]}, median {trains[len(trains) // 2]}, max "
            f"{trains[-1]}; {d.client_val_fraction:.0%} of each kept for "
            "client validation",
        ),
    ]


def _round_rows(plan: FederationPlan, trains: list[int]) -> list[Row]:
    """What each round does: strategy, sampling, training, privacy, gate, tracking."""
    from federator.server.plan.privacy import describe_privacy

    s, t, g, tr = plan.strategy, plan.training, plan.gate, plan.tracking
    params = s.params.model_dump()
    profile = plan.resolved["deployment"]["profile"]
    extra = f" momentum {t.momentum}" if t.momentum else ""
    privacy = describe_privacy(
        plan.privacy,
        typical_examples=trains[len(trains) // 2],
        batch_size=t.batch_size,
        epochs=t.epochs,
    )
    op = "≥" if g.metric.value == "accuracy" else "≤"
    spread = (
        f"; per-client accuracy spread ≤ {g.max_client_spread}"
        if g.max_client_spread is not None
        else "; client spread not checked"
    )
    return [
        ("strategy", f"{s.name} {params if params else ''} — {s.spec.paper}"),
        (
            "sampling",
            f"{s.train_nodes_per_round} clients train and "
            f"{s.evaluate_nodes_per_round} evaluate per round; a round needs "
            f"≥ {s.min_replies} good update(s); timeout {s.round_timeout:.0f} s"
            + (f" ({profile} profile)" if profile else ""),
        ),
        (
            "training",
            f"{t.epochs} epoch(s), batch {t.batch_size}, "
            f"{t.optimizer.value} lr {t.lr}{extra}, weight decay "
            f"{t.weight_decay}" + (f", FedProx μ {t.proximal_mu}" if t.proximal_mu else ""),
        ),
        ("privacy", "\n".join(privacy)),
        *([("attack", f"{plan.attack.summary()} (simulation only)")] if plan.attack else []),
        ("rounds", f"{plan.rounds} (seed {plan.seed})"),
        (
            "gate",
            f"{g.metric.value} {op} {g.threshold}; at most {g.max_regression} "
            f"worse than the champion{spread}",
        ),
        (
            "tracking",
            f"{tr.uri}"
            + (f" (artifacts in {tr.artifact_location})" if tr.artifact_location else "")
            + f"; experiment {tr.experiment!r}; registered model "
            f"{tr.registered_model!r}; at most {tr.max_unsaved_rounds} round(s) unsaved",
        ),
    ]


@app.command()
def validate(
    config: ConfigArg,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    seed: SeedOpt = None,
    tracking_uri: UriOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check CONFIG (with overrides) and print the resolved plan. Starts nothing."""
    overrides = run_action(lambda: _overrides(rounds, clients, seed, tracking_uri, set_))
    _import_path_for(config)
    table = run_action(lambda: _plan_table(config, overrides))
    out.print(table)
    out.print("[green]valid[/]: nothing was started.")


@app.command()
def simulate(
    config: ConfigArg,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    seed: SeedOpt = None,
    tracking_uri: UriOpt = None,
    set_: SetOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help="Continue this MLflow run after its last checkpoint (same config)."
        ),
    ] = None,
    stock_flower: Annotated[
        bool, typer.Option("--stock-flower", help="Flower's own 0.1 s dispatch (slower rounds).")
    ] = False,
) -> None:
    """Run CONFIG as a local federation on Flower's Simulation Engine."""
    _quiet_libraries(verbose)

    def go() -> None:
        from federator.server.plan import load_plan
        from federator.server.plan.datacheck import check_data
        from federator.server.progress import RichProgress
        from federator.simulations.runner import simulate as run_sim

        _import_path_for(config)
        plan = load_plan(config, overrides=_overrides(rounds, clients, seed, tracking_uri, set_))
        check_data(plan)
        out.print(
            f"[dim]starting {plan.data.clients} simulated clients on Flower's Simulation Engine…[/]"
        )
        display = RichProgress(out)
        run_sim(plan, display=display, resume=resume, verbose=verbose, stock_flower=stock_flower)

    run_action(go)


@models_app.command("list")
def models_list(
    config: Annotated[
        str,
        typer.Argument(
            help="The federation config whose registry to list (path or bundled example name)."
        ),
    ] = "demo",
    tracking_uri: UriOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Registered model name (default: the config's).")
    ] = None,
) -> None:
    """List registered model versions with round, validation accuracy and gate decision."""
    _quiet_libraries(False)

    def go() -> None:
        from federator.server.plan import load_plan
        from federator.server.tracking.registry_view import list_versions, open_client

        plan = load_plan(config, overrides=_overrides(None, None, None, tracking_uri, None))
        name = model or plan.tracking.registered_model
        rows = list_versions(open_client(plan.tracking.uri), name)
        table = Table(title=f"{name} @ {plan.tracking.uri}", title_justify="left")
        for col in ("version", "round", "val acc", "gate", "aliases", "run", "why not promoted"):
            table.add_column(col, overflow="fold")
        for r in rows:
            gate = {"promoted": "[green]promoted[/]", "rejected": "[yellow]rejected[/]"}.get(
                r.decision, r.decision
            )
            why = r.reasons.split("; ")[0] if r.decision == "rejected" else ""
            table.add_row(
                str(r.version),
                r.round,
                r.val_accuracy,
                gate,
                ", ".join(r.aliases),
                r.run_id[:8],
                why,
            )
        out.print(table)
        for run_id in dict.fromkeys(r.run_id for r in rows):
            out.print(f"run {run_id[:8]} = MLflow run {run_id}", highlight=False)
        if not rows:
            out.print("no versions yet")

    run_action(go)


@models_app.command("export")
def models_export(
    config: Annotated[str, typer.Argument(help="The federation config (path or example).")],
    version: Annotated[int, typer.Option("--version", help="Registered model version.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the release to.")],
    tracking_uri: UriOpt = None,
) -> None:
    """Write a version's signed release (envelope.json + the signed files) to a folder, e.g.
    to hand to a partner out of band (`federator node install`)."""
    _quiet_libraries(False)

    def go() -> None:
        from federator.server.plan import load_plan
        from federator.server.tracking.registry_view import export_release, open_client

        plan = load_plan(config, overrides=_overrides(None, None, None, tracking_uri, None))
        files = export_release(
            open_client(plan.tracking.uri), plan.tracking.registered_model, version, out_dir
        )
        out.print(
            f"release of {plan.tracking.registered_model} version {version} in "
            f"{out_dir}: {', '.join(files)}"
        )

    run_action(go)


@app.command()
def strategies() -> None:
    """List the aggregation strategies, their parameters and the papers they implement."""
    from federator.strategies import STRATEGIES

    table = Table(title="Strategies", title_justify="left")
    for col in ("name", "parameters (defaults)", "robust", "works with", "paper"):
        table.add_column(col, overflow="fold")
    for name in STRATEGIES:
        spec = STRATEGIES.get(name)
        params = ", ".join(f"{k}={v.default}" for k, v in spec.params_model.model_fields.items())
        works = [
            *(["local DP"] if spec.per_example_loss else []),
            *(["central DP"] if not spec.needs_individual_updates else []),
            *(["accounted central DP", "SecAgg+"] if spec.plain_fedavg else []),
        ]
        table.add_row(
            name,
            params or "–",
            "yes" if spec.needs_individual_updates else "",
            ", ".join(works) or "–",
            spec.paper,
        )
    out.print(table)


@app.command()
def version() -> None:
    """Print Federator's version."""
    out.print(__version__)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="federator")


if __name__ == "__main__":
    main()
