"""``federator monitor CONFIG``: what each node's model service reported, as a table;
``federator watch CONFIG``: retrain when the ``[retrain]`` policy fires.

Registered on the ``federator`` command by `federator.server.cli`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federator import ConfigError
from federator.client.actions import run_action
from federator.server.federation.monitoring import INSTALLED_ACCURACY, INSTALLED_VERSION
from federator.server.plan.overrides import Override
from federator.server.plan.retrain import Trigger, decide

if TYPE_CHECKING:
    from federator.server.plan import FederationPlan

out = Console()


def monitor(
    config: Annotated[
        str, typer.Argument(help="The federation config (path or bundled example name).")
    ] = "demo",
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (default: the config's)."),
    ] = None,
) -> None:
    """What each node's model service reported: version in use, traffic, drift, fall-backs
    (from the federation's newest MLflow run; nodes by pseudonym)."""

    def go() -> None:
        from federator.server.plan import load_plan
        from federator.server.tracking.registry_view import open_client
        from federator.server.tracking.serving_view import serving_view

        uri = (
            [Override(("tracking", "uri"), tracking_uri, "--tracking-uri")] if tracking_uri else []
        )
        plan = load_plan(config, overrides=uri)
        view = serving_view(open_client(plan.tracking.uri), plan.tracking.experiment)
        table = Table(
            title=f"Model services of {plan.name!r} (run {view.run_id[:8]}, {view.status})",
            title_justify="left",
        )
        for col in (
            "node", "round", "version", "requests", "rows", "drifted features", "PSI max",
            "prediction shift", "fall-backs", "installed accuracy",
        ):  # fmt: skip
            table.add_column(col, justify="right" if col != "node" else "left")
        for r in view.rows:
            table.add_row(
                r.pseudonym,
                str(r.round),
                _number(r.get("version")),
                _number(r.get("requests")),
                _number(r.get("rows")),
                _share(r.get("drifted_features")),
                _decimal(r.get("psi_max")),
                _decimal(r.get("prediction_js")),
                _number(r.get("fallbacks")),
                _installed(r.get(INSTALLED_ACCURACY), r.get(INSTALLED_VERSION)),
            )
        out.print(table)
        if not view.rows:
            out.print("no node has reported a model service yet (federator node serve)")

    run_action(go)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _installed(accuracy: float | None, version: float | None) -> str:
    if accuracy is None or version is None:
        return "–"
    return f"{accuracy:.1%} (v{int(version)})"


def _decimal(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def watch(
    config: Annotated[
        str, typer.Argument(help="The federation config with a [retrain] section.")
    ] = "demo",
    once: Annotated[
        bool, typer.Option("--once", help="Check once (retraining if a trigger fires), then stop.")
    ] = False,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="Retrain in this deployment (host:port; with --kit)."),
    ] = None,
    kit: Annotated[
        Path | None, typer.Option("--kit", help="The coordinator kit (with --coordinator).")
    ] = None,
) -> None:
    """Watch the nodes' reports and the champion's age; when the [retrain] policy fires,
    start a federation warm-started from the champion (simulated, or submitted with --kit)."""

    def go() -> None:
        from federator.server.plan import load_plan
        from federator.server.tracking.registry_view import open_client

        if (coordinator is None) != (kit is None):
            raise ConfigError("--coordinator and --kit go together")
        plan = load_plan(config)
        policy = plan.retrain
        if not policy.active:
            raise ConfigError(
                f"{config}: [retrain] sets no trigger (drift_nodes, accuracy_drop or "
                "max_age_hours): nothing to watch for"
            )
        client = open_client(plan.tracking.uri)
        while True:
            trigger = _check(client, plan)
            if trigger is not None:
                _retrain(config, plan, trigger, coordinator=coordinator, kit=kit)
            if once:
                return
            time.sleep(policy.check_every_s)

    run_action(go)


def _check(client: Any, plan: FederationPlan) -> Trigger | None:
    """One look: what the reports say, and whether the policy fires (printed either way)."""
    from federator.server.tracking.serving_view import observe

    seen = observe(
        client, experiment=plan.tracking.experiment, model=plan.tracking.registered_model
    )
    trigger = decide(plan.retrain, seen, now=datetime.now(UTC))
    drifting = sum(1 for v in seen.drifted.values() if v >= plan.retrain.drift_features)
    champion = (
        f"champion registered {seen.champion_at:%Y-%m-%d %H:%M} UTC"
        if seen.champion_at
        else "no champion yet (nothing to retrain from)"
    )
    stamp = f"{datetime.now(UTC):%H:%M:%S}"
    worst = max(seen.accuracy_drops.values(), default=None)
    accuracy = (
        f", champion's accuracy down by at most {worst:.1%} on {len(seen.accuracy_drops)}"
        if worst is not None
        else ""
    )
    out.print(
        f"{stamp} {len(seen.drifted)} node(s) reporting, {drifting} drifting{accuracy}; "
        f"{champion}"
        + (f"; last retrain {seen.last_retrain_at:%Y-%m-%d %H:%M}" if seen.last_retrain_at else "")
    )
    if trigger is not None:
        out.print(f"[bold]retrain[/] ({trigger.kind.value}): {trigger.reason}")
    return trigger


def _retrain(
    config: str,
    plan: FederationPlan,
    trigger: Trigger,
    *,
    coordinator: str | None,
    kit: Path | None,
) -> None:
    """A federation warm-started from the champion, tagged with the trigger that started it."""
    from federator.server.tracking.serving_view import RETRAIN_PREFIX

    changes: list[tuple[tuple[str, ...], object]] = [
        (("federation", "warm_start"), "champion"),
        (
            ("federation", "started_by"),
            f"{RETRAIN_PREFIX}{trigger.kind.value}: {trigger.reason}"[:500],
        ),
    ]
    if plan.retrain.rounds is not None:
        changes.append((("federation", "rounds"), plan.retrain.rounds))
    overrides = [Override(path, value, "federator watch") for path, value in changes]
    if kit is not None and coordinator is not None:
        from federator.server.cli.coordinator import submit

        submit(config, coordinator=coordinator, kit=kit, overrides=overrides)
        return
    from federator.server.cli import _import_path_for
    from federator.server.plan import load_plan
    from federator.server.progress import RichProgress
    from federator.simulations.runner import simulate

    _import_path_for(config)
    simulate(load_plan(config, overrides=overrides), display=RichProgress(out))


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
    app.command("watch")(watch)


__all__ = ["monitor", "register", "watch"]
