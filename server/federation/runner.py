"""Run one federation on a grid: tracking, display, the round loop and the closing summary.

Shared by every way a federation starts — ``federator simulate`` (in-process Simulation
Engine), ``flwr run .`` (the ServerApp inside a SuperLink) and tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from flwr.serverapp import Grid

from federator.server.federation.durability import DurabilityListener
from federator.server.federation.events import (
    FederationStarted,
    FederationSummary,
    RoundOutcome,
)
from federator.server.federation.exchange import Exchange
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.rounds import Federation, ServerEvaluator
from federator.server.plan import FederationPlan
from federator.server.releases import DeliveryReport, ReleaseChannel, ReleaseSigner
from federator.server.tracking import MlflowTracking
from federator.server.tracking import mlflow_io as io
from federator.server.tracking.provenance import code_version
from federator.simulations.partition import server_holdout


class Display(DurabilityListener, Protocol):
    """What the runner needs from a progress display (`RichProgress`, `LogProgress`)."""

    def on_waiting(self, connected: int, needed: int) -> None: ...
    def on_start(self, event: FederationStarted) -> None: ...
    def on_round(self, outcome: RoundOutcome) -> None: ...
    def stop(self) -> None: ...
    def saving(self, pending: int) -> None: ...
    def on_release(self, report: DeliveryReport) -> None: ...
    def summary(self, s: FederationSummary) -> None: ...


def run_federation(
    grid: Grid,
    plan: FederationPlan,
    *,
    display: Display,
    mlflow_client: Callable[[str], Any] = io.make_client,
    cancel: threading.Event | None = None,
    resume: str | None = None,
    node_timeout: float = 300.0,
) -> FederationSummary:
    """Open tracking, run every round, drain MLflow writes, show and return the summary.

    MLflow problems surface before round 1 (the run is opened first). Whatever happens in
    the rounds, queued MLflow writes are finished and the run is ended (FAILED on error,
    KILLED when ``cancel`` was set). With ``resume`` (an MLflow run id) the federation
    continues that run after its last checkpoint instead of starting a new one.
    """
    io.quiet_mlflow_env()
    t0 = time.monotonic()
    signer = ReleaseSigner(plan.release.load_signing_key()) if plan.release else None
    tracking = MlflowTracking(
        plan,
        client=mlflow_client(plan.tracking.uri),
        code_version=code_version(),
        signer=signer,
        listener=display,
    )
    checkpoint = tracking.resume(resume) if resume else None
    if resume is None:
        tracking.open()
    exchange = Exchange(grid, cancel=cancel)
    directory = NodeDirectory(grid, salt=f"{plan.name}:{plan.seed}", exchange=exchange)
    channel = (
        _release_channel(grid, exchange, directory, tracking=tracking, display=display)
        if signer is not None
        else None
    )
    federation = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=directory,
        observers=[tracking, display, *([channel] if channel else [])],
        exchange=exchange,
        node_timeout=node_timeout,
        run_id=tracking.run_id,
    )
    try:
        outcomes = federation.run(resume=checkpoint, resumed=resume is not None)
    except BaseException as err:
        _record_failure(err, tracking=tracking, display=display)
        raise
    display.stop()
    if channel is not None:
        # The last champion may have been signed after the last round: send it now.
        tracking.drain(on_wait=display.saving)
        channel.run()
    report = tracking.finish(on_wait=display.saving, stop_reason=federation.stop_reason)
    champion = federation.gate.champion
    summary = FederationSummary(
        plan=plan,
        outcomes=outcomes,
        duration=time.monotonic() - t0,
        run_id=report.run_id,
        versions=report.versions,
        champion_round=champion.round if champion else None,
        champion_version=report.champion_version,
        ui_command=report.ui_command,
        stop_reason=federation.stop_reason,
        durability=report.durability,
    )
    display.summary(summary)
    return summary


def _release_channel(
    grid: Grid,
    exchange: Exchange,
    directory: NodeDirectory,
    *,
    tracking: MlflowTracking,
    display: Display,
) -> ReleaseChannel:
    """The channel that pushes each committed champion to the nodes; every push is recorded
    in MLflow and shown."""

    def on_delivery(deliveries: DeliveryReport) -> None:
        tracking.on_release(deliveries)
        display.on_release(deliveries)

    return ReleaseChannel(
        grid_nodes=lambda: list(grid.get_node_ids()),
        exchange=exchange,
        directory=directory,
        source=tracking.take_releases,
        report=on_delivery,
    )


def _record_failure(err: BaseException, *, tracking: MlflowTracking, display: Display) -> None:
    """End the MLflow run after ``err`` (its writes drained) and note on ``err`` what is saved."""
    display.stop()
    try:
        report = tracking.finish(failed=err, on_wait=display.saving)
        err.add_note(
            f"saved through round {report.durability.saved_through} in MLflow run "
            f"{report.run_id} ({report.ui_command}); continue it with --resume "
            f"{report.run_id}"
        )
    except Exception as tracking_err:  # noqa: BLE001 - the round error is the one to raise
        err.add_note(f"also, recording the failure in MLflow failed: {tracking_err}")
