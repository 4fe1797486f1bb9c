"""The Federator ServerApp.

``app`` is what ``flwr run .`` starts (the checkout's pyproject names it): it reads the
federation config named by the run config key ``federation-config`` — a bundled example's
name or a path — and logs progress as plain lines. ``federator simulate`` builds its own
instance with `build_server_app`, handing it an already validated plan, a terminal display
and a `RunHandle` to follow (and interrupt) the run from another thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federator.server._flwr_compat import FlowerCompat
from federator.server.federation.events import FederationSummary
from federator.server.federation.run_config import (
    RESUME_KEY,
    STOCK_FLOWER_KEY,
    SUBMITTED_KEY,
    decode_config,
)
from federator.server.federation.runner import Display, run_federation
from federator.server.plan import FederationPlan, build_plan, load_plan
from federator.server.progress import LogProgress

CONFIG_KEY = "federation-config"


@dataclass
class RunHandle:
    """Shared with the thread running the ServerApp.

    Set ``cancel`` to stop the federation between polls (its MLflow run ends KILLED with
    every completed round recorded). ``finished`` is set once the ServerApp has cleaned up;
    then ``summary`` or ``error`` says how it ended.
    """

    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    summary: FederationSummary | None = None
    error: BaseException | None = None


def _plan_from(context: Context) -> FederationPlan:
    """The plan a run was submitted with (`federator run`), else the config it names."""
    submitted = context.run_config.get(SUBMITTED_KEY)
    if isinstance(submitted, str) and submitted:
        return build_plan(decode_config(submitted), source="config submitted by federator run")
    return load_plan(str(context.run_config.get(CONFIG_KEY, "demo")))


def _resume_from(context: Context) -> str | None:
    """The MLflow run a submitted run continues (`federator run --resume`), if any."""
    value = context.run_config.get(RESUME_KEY)
    return value if isinstance(value, str) and value else None


def _compat_from(context: Context) -> FlowerCompat:
    """Stock Flower if the run was submitted with ``--stock-flower`` (said in the run's log)."""
    compat = FlowerCompat(stock=context.run_config.get(STOCK_FLOWER_KEY) is True)
    if compat.stock:
        from flwr.common.logger import log

        log(logging.INFO, "coordinator on %s", compat.describe())
    return compat


def build_server_app(
    plan: FederationPlan | None = None,
    *,
    display: Display | None = None,
    handle: RunHandle | None = None,
    resume: str | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan named in the run config); ``resume`` names
    an MLflow run to continue after its last checkpoint."""
    app = ServerApp()
    run = handle or RunHandle()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            the_plan = plan or _plan_from(context)
            run.summary = run_federation(
                grid,
                the_plan,
                display=display or LogProgress(),
                cancel=run.cancel,
                resume=resume or _resume_from(context),
                compat=_compat_from(context),
            )
        except BaseException as err:
            run.error = err
            raise
        finally:
            run.finished.set()

    return app


app = build_server_app()

__all__ = ["CONFIG_KEY", "RunHandle", "app", "build_server_app"]
