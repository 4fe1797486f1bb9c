"""``federator monitor CONFIG``: what each node's model service reported, as a table.

Registered on the ``federator`` command by `federator.server.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from federator.client.actions import run_action
from federator.server.plan.overrides import Override

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
            "prediction shift", "fall-backs",
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
            )
        out.print(table)
        if not view.rows:
            out.print("no node has reported a model service yet (federator node serve)")

    run_action(go)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _decimal(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)


__all__ = ["monitor", "register"]
