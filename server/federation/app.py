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
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from federator import ConfigError
from federator.client.bundle import TaskBundle, bundle_from_run_config, import_bundled
from federator.client.keys import load_public_key
from federator.client.wire import TASK_BUNDLE_KEY
from federator.server._flwr_compat import FlowerCompat
from federator.server.federation.events import FederationSummary
from federator.server.federation.identity import NodeKeys, load_node_keys
from federator.server.federation.run_config import (
    NODE_KEYS_KEY,
    RESUME_KEY,
    STOCK_FLOWER_KEY,
    SUBMITTED_KEY,
    decode_config,
)
from federator.server.federation.runner import Display, run_federation
from federator.server.plan import FederationPlan, build_plan, for_deployment, load_plan
from federator.server.plan.config import ReleaseSection
from federator.server.plan.release import release_plan
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
    """The plan a run was submitted with (`federator run`), else the config it names; never
    one with an ``[attack]`` (`for_deployment`: attacks run under ``federator simulate``)."""
    submitted = context.run_config.get(SUBMITTED_KEY)
    if isinstance(submitted, str) and submitted:
        raw = decode_config(submitted)
        bundle = _bundle_from(context, raw)  # on the import path before the plan imports it
        plan = for_deployment(build_plan(raw, source="config submitted by federator run"))
        return replace(plan, task_bundle=bundle)
    return for_deployment(load_plan(str(context.run_config.get(CONFIG_KEY, "demo"))))


def _bundle_from(context: Context, raw: dict[str, Any]) -> TaskBundle | None:
    """The run's task bundle, verified with the federation's own release key and imported
    from ``<runs_dir>/task-bundles/<sha256>/``: the coordinator runs the very code the nodes
    get (None: a built-in task)."""
    if not context.run_config.get(TASK_BUNDLE_KEY):
        return None
    release = release_plan(ReleaseSection.model_validate(raw.get("release") or {}))
    if release is None:
        raise ConfigError("the run carries a task bundle but names no release key to verify it")
    bundle = bundle_from_run_config(
        context.run_config, pinned=load_public_key(release.public_key), max_bytes=None
    )
    import_bundled(bundle, Path(raw["tracking"]["runs_dir"]) / "task-bundles")
    log(logging.INFO, "task %s from its bundle, sha256 %s", bundle.task, bundle.digest)
    return bundle


def _resume_from(context: Context) -> str | None:
    """The MLflow run a submitted run continues (`federator run --resume`), if any."""
    value = context.run_config.get(RESUME_KEY)
    return value if isinstance(value, str) and value else None


def _node_keys_from(context: Context) -> NodeKeys | None:
    """The keys nodes must prove they hold (``federator run --kit``); None: a simulation, or
    a run submitted without its kit, whose nodes' names are taken as given (said in the log)."""
    folder = context.run_config.get(NODE_KEYS_KEY)
    if isinstance(folder, str) and folder:
        keys = load_node_keys(Path(folder))
        log(logging.INFO, "nodes must prove one of %d provisioned names", len(keys.keys))
        return keys
    if context.run_config.get(SUBMITTED_KEY):
        log(logging.WARNING, "submitted without node keys: node names are not verified")
    return None


def _compat_from(context: Context) -> FlowerCompat:
    """Stock Flower if the run was submitted with ``--stock-flower`` (said in the run's log)."""
    compat = FlowerCompat(stock=context.run_config.get(STOCK_FLOWER_KEY) is True)
    if compat.stock:
        log(logging.INFO, "coordinator on %s", compat.describe())
    return compat


def simulation_dispatch(*, stock: bool = False) -> AbstractContextManager[None]:
    """Around ``run_simulation``: Flower's Simulation Engine hands messages to its workers
    every 0.01 s instead of every 0.1 s (``stock``: Flower's own), so simulated rounds are
    not rounded up to 0.1 s steps (`federator.server._flwr_compat.sim_dispatch`)."""
    return FlowerCompat(stock=stock).simulation_dispatch()


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
                node_keys=_node_keys_from(context),
            )
        except BaseException as err:
            run.error = err
            raise
        finally:
            run.finished.set()

    return app


app = build_server_app()

__all__ = ["CONFIG_KEY", "RunHandle", "app", "build_server_app", "simulation_dispatch"]
