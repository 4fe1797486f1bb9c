"""Local simulation on Flower's own Simulation Engine (Ray), in this process.

The ServerApp runs in a thread of this process (so the terminal display and errors reach the
user directly), and each simulated client runs Federator's real ClientApp in a Ray worker with
its own partition. ``flwr run .`` from a checkout uses the very same apps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from federator import FederationFailed, FederationInterrupted, FederatorError

if TYPE_CHECKING:  # the server imports this package; import it back only for types
    from federator.client.node import SimulatedNodes
    from federator.server.federation.events import FederationSummary
    from federator.server.federation.runner import Display
    from federator.server.plan import FederationPlan
    from federator.simulations.attacks import LabelFlip


@dataclass(frozen=True, kw_only=True)
class SimulationResources:
    """CPU budget for the simulation: Ray gets ``total_cpus``; each client ``cpus_per_client``
    (so ``total_cpus // cpus_per_client`` clients train at once)."""

    total_cpus: int = max(os.cpu_count() or 1, 1)
    cpus_per_client: float = 1.0


FINISH_TIMEOUT = 300.0  # seconds the ServerApp may take to drain MLflow after Ctrl-C


def _quiet_environment() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _DropRunSimulationNotice(logging.Filter):
    """Flower announces on every call that `run_simulation` will go away; the user of
    `federator simulate` did not call it and cannot act on that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def simulated_nodes(plan: FederationPlan) -> SimulatedNodes:
    """The settings of ``plan``'s simulated partner nodes (`federator.client.node`): each
    keeps its privacy ledger under ``<runs_dir>/nodes/privacy-ledgers`` (ledgers span
    federations, as a real node's do) and, when the plan releases models, its own store under
    ``<runs_dir>/nodes/<federation>/<label>``, pinning the release public key from the plan —
    exactly as a real partner pins the key it was given out of band."""
    from federator.client.node import SimulatedNodes

    ledgers = SimulatedNodes(
        ledger_root=plan.tracking.runs_dir / "nodes" / "privacy-ledgers",
        label_flip=label_flip(plan),
    )
    if plan.release is None:
        return ledgers
    return replace(
        ledgers,
        store_root=plan.tracking.runs_dir / "nodes" / plan.name,
        pinned_key=plan.release.public_key,
        model=plan.tracking.registered_model,
        keep=plan.release.keep,
    )


def label_flip(plan: FederationPlan) -> LabelFlip | None:
    """The attacker partitions' label flip, if ``plan``'s ``[attack]`` is one; its classes
    are those of the whole dataset (0 … the largest label)."""
    from federator.simulations.attacks import AttackKind, LabelFlip
    from federator.simulations.datasets import load_dataset

    attack = plan.attack
    if attack is None or attack.kind is not AttackKind.LABEL_FLIP:
        return None
    classes = int(load_dataset(plan.data.dataset).y.max()) + 1
    return LabelFlip(partitions=frozenset(attack.attackers), num_classes=classes)


def simulate(
    plan: FederationPlan,
    *,
    display: Display,
    resources: SimulationResources | None = None,
    resume: str | None = None,
    verbose: bool = False,
    nodes: SimulatedNodes | None = None,
    stock_flower: bool = False,
) -> FederationSummary:
    """Run ``plan`` with ``plan.data.clients`` simulated nodes and return its summary.

    Flower's Simulation Engine dispatches messages every 0.01 s rather than 0.1 s
    (`federator.server.federation.app.simulation_dispatch`); ``stock_flower`` keeps Flower's.

    The nodes get ``nodes`` as their settings (default: `simulated_nodes` of the plan; either
    way with the plan's `label_flip`), bound into the ClientApp that Flower ships to its Ray
    workers. Errors raised by the
    federation (config, data, tracking, too many skipped rounds) propagate unchanged.
    """
    _quiet_environment()
    from federator.server.tracking.mlflow_io import preflight

    # Before Ray starts: an unreachable tracking store must start nothing at all.
    preflight(plan.tracking.uri, artifact_location=plan.tracking.artifact_location)
    from flwr.simulation import run_simulation

    if not verbose:
        _quiet_warnings()  # after Flower's import, which turns DeprecationWarnings back on

    from federator.client.app import build_client_app
    from federator.server.federation.app import RunHandle, build_server_app, simulation_dispatch

    # The plan's label flip goes to the nodes whatever settings they were given.
    nodes = simulated_nodes(plan) if nodes is None else replace(nodes, label_flip=label_flip(plan))
    client_app = build_client_app(simulated=nodes)
    handle = RunHandle()
    server_app = build_server_app(plan, display=display, handle=handle, resume=resume)
    try:
        with (
            _flower_logging(verbose=verbose),
            warnings.catch_warnings(),
            simulation_dispatch(stock=stock_flower),
        ):
            warnings.simplefilter("ignore", FutureWarning)  # Ray's accelerator-env tip
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=plan.data.clients,
                backend_config=_backend_config(resources or SimulationResources(), verbose),
                verbose_logging=verbose,
            )
    except KeyboardInterrupt:
        # Ctrl-C lands in this (the engine's) thread. Tell the ServerApp thread to stop and
        # give it time to record the interruption and finish its MLflow writes.
        handle.cancel.set()
        handle.finished.wait(timeout=FINISH_TIMEOUT)
        if isinstance(handle.error, FederatorError):
            raise handle.error from None
        raise FederationInterrupted("the federation was interrupted") from None
    if handle.summary is None:
        if isinstance(handle.error, FederatorError):
            raise handle.error
        raise FederationFailed(
            "the simulation ended without finishing the federation (see the log above)"
        )
    return handle.summary


def _backend_config(res: SimulationResources, verbose: bool) -> Any:
    """Ray's settings: CPUs per client and in all, no GPU, no dashboard."""
    return {
        "client_resources": {"num_cpus": res.cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": res.total_cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": verbose,
        },
    }


@contextlib.contextmanager
def _flower_logging(*, verbose: bool) -> Iterator[None]:
    """Flower's logger without its deprecation notice (and, unless verbose, warnings only)."""
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    notice_filter = _DropRunSimulationNotice()
    flwr_logger.addFilter(notice_filter)
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.removeFilter(notice_filter)
