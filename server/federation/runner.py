"""Run one federation on a grid: tracking, display, the round loop and the closing summary.

Shared by every way a federation starts — ``federator simulate`` (in-process Simulation
Engine), ``flwr run .`` (the ServerApp inside a SuperLink) and tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from flwr.serverapp import Grid

from federator.server._flwr_compat import FlowerCompat
from federator.server.federation.checkpoint import Checkpoint, Checkpointer
from federator.server.federation.durability import DurabilityListener
from federator.server.federation.events import (
    FederationStarted,
    FederationSummary,
    RoundOutcome,
)
from federator.server.federation.exchange import Exchange
from federator.server.federation.identity import NodeKeys
from federator.server.federation.instructions import ServerEvaluator, initial_arrays
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.rounds import Federation
from federator.server.plan import FederationPlan
from federator.server.releases import (
    DeliveryRecorder,
    DeliveryReport,
    ReleaseChannel,
    ReleaseService,
    ReleaseSigner,
)
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
    compat: FlowerCompat | None = None,
    node_keys: NodeKeys | None = None,
) -> FederationSummary:
    """Open tracking, run every round, drain MLflow writes, show and return the summary.

    MLflow problems surface before round 1 (the run is opened first). Whatever happens in
    the rounds, queued MLflow writes are finished and the run is ended (FAILED on error,
    KILLED when ``cancel`` was set). With ``resume`` (an MLflow run id) the federation
    continues that run after its last checkpoint instead of starting a new one. ``compat``:
    Federator's Flower patches (default) or stock Flower. ``node_keys``: the provisioned
    nodes' keys each node must prove it holds (a deployment); None trusts the labels nodes
    give (simulation).
    """
    io.quiet_mlflow_env()
    t0 = time.monotonic()
    checkpointer = Checkpointer()
    tracking = MlflowTracking(
        plan,
        client=mlflow_client(plan.tracking.uri),
        code_version=code_version(),
        checkpointer=checkpointer,
        listener=display,
    )
    exchange = Exchange(grid, cancel=cancel, compat=compat)
    directory = NodeDirectory(
        grid, salt=f"{plan.name}:{plan.seed}", keys=node_keys, exchange=exchange
    )
    releases = _release_service(plan, grid, exchange, directory, recorders=[tracking, display])
    checkpoint = tracking.reopen(resume, releases=releases) if resume else None
    start_from = None
    if resume is None:
        if plan.warm_start is not None:  # checked before the run exists
            start_from = tracking.warm_start(
                plan.warm_start, like=initial_arrays(plan.task(), plan.seed)
            )
        tracking.open(releases=releases)
    federation = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=directory,
        observers=[tracking, display, *([releases] if releases else [])],
        exchange=exchange,
        node_timeout=node_timeout,
        run_id=tracking.run_id,
        checkpointer=checkpointer,
        start_from=start_from,
    )
    if resume is not None:
        _resume(checkpoint, checkpointer=checkpointer, tracking=tracking)
    try:
        outcomes = federation.run(resumed=resume is not None)
    except BaseException as err:
        _record_failure(err, tracking=tracking, display=display)
        raise
    display.stop()
    summary = _finish(
        plan,
        federation=federation,
        outcomes=outcomes,
        tracking=tracking,
        releases=releases,
        display=display,
        started=t0,
    )
    display.summary(summary)
    return summary


def _finish(
    plan: FederationPlan,
    *,
    federation: Federation,
    outcomes: list[RoundOutcome],
    tracking: MlflowTracking,
    releases: ReleaseService | None,
    display: Display,
    started: float,
) -> FederationSummary:
    """Drain MLflow's writes, send the last champion, end the run; the federation's summary."""
    if releases is not None:
        # The last champion may have been committed after the last round: send it now.
        tracking.drain(on_wait=display.saving)
        releases.deliver()
    report = tracking.finish(on_wait=display.saving, stop_reason=federation.stop_reason)
    champion = federation.gate.champion
    return FederationSummary(
        plan=plan,
        outcomes=outcomes,
        duration=time.monotonic() - started,
        run_id=report.run_id,
        versions=report.versions,
        champion_round=champion.round if champion else None,
        champion_version=report.champion_version,
        ui_command=report.ui_command,
        stop_reason=federation.stop_reason,
        durability=report.durability,
    )


def _resume(
    checkpoint: Checkpoint | None, *, checkpointer: Checkpointer, tracking: MlflowTracking
) -> None:
    """Continue a reopened run: every registered part (the round loop, the gate, the
    strategy, the accountant, the lineage, the round journal) back as ``checkpoint`` left it
    (``None``: the run died before its first commit, so round 1 comes next), then tracking
    tidies the run up to that round and re-offers the champion's release."""
    if checkpoint is not None:
        checkpointer.restore(checkpoint)
    tracking.resume(after_round=checkpoint.round if checkpoint else 0)


def _release_service(
    plan: FederationPlan,
    grid: Grid,
    exchange: Exchange,
    directory: NodeDirectory,
    *,
    recorders: Sequence[DeliveryRecorder],
) -> ReleaseService | None:
    """The service that signs each champion and pushes it to the nodes once committed
    (``None`` without a signing key); every push goes to ``recorders``."""
    if plan.release is None:
        return None
    channel = ReleaseChannel(grid_nodes=directory.admitted, exchange=exchange, directory=directory)
    signer = ReleaseSigner(plan.release.load_signing_key())
    return ReleaseService(signer, plan=plan, channel=channel, recorders=recorders)


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
