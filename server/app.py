"""The Federator ServerApp.

``app`` is what ``flwr run .`` starts (the checkout's pyproject names it): it reads the
federation config named by the run config key ``federation-config`` — a bundled example's
name or a path — and logs progress as plain lines. ``federator simulate`` builds its own
instance with `build_server_app`, handing it an already validated plan and a terminal display.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federator.server.events import FederationSummary
from federator.server.plan import FederationPlan, load_plan
from federator.server.progress import LogProgress
from federator.server.runner import Display, run_federation

CONFIG_KEY = "federation-config"


def build_server_app(
    plan: FederationPlan | None = None,
    *,
    display: Display | None = None,
    results: list[FederationSummary] | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan named in the run config).

    Each finished federation's summary is appended to ``results`` when given.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        the_plan = plan or load_plan(str(context.run_config.get(CONFIG_KEY, "demo")))
        summary = run_federation(grid, the_plan, display=display or LogProgress())
        if results is not None:
            results.append(summary)

    return app


app = build_server_app()

__all__ = ["CONFIG_KEY", "app", "build_server_app"]
