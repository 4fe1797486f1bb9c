"""MLflow hooks: one run per federation, metrics per round, a model version per global model.

`MlflowTracking` is an observer of the round loop. The run is opened (or, to resume, reopened)
synchronously, so an unreachable store stops the federation before it starts. After that, two
background threads write:

* the *writer* (`OrderedWorker`) does what a resume needs, one job per round, in order:
  register the model version with its weights and lineage, write the round's checkpoint and
  commit it with the run tag ``federator.checkpoint_round``, log the round's metrics — and only
  then hand a signed release to the release channel, so no node ever gets a version that a
  crash could undo. These writes take tens of milliseconds; `DurabilityLedger` makes the round
  loop wait whenever more than ``tracking.max_unsaved_rounds`` finished rounds are still
  uncommitted (back-pressure), so a crash loses at most the round in flight, whatever the load.
* the *exporter* (`FlavourExports`) attaches the pt2 pytorch flavour to each version when the
  low-priority export process gets to it, under full load perhaps only after the last round.
  Nothing waits for it but the end of the run, and no resume depends on it.

A crash before a commit leaves at most an orphan version, which a resume deletes; a crash after
it leaves metrics that a resume logs from the checkpoint, and versions without a flavour that a
resume exports. Every round is therefore recorded exactly once.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from federator import FederationInterrupted, TrackingError
from federator.client.wire import DeliveryStatus
from federator.server.federation.checkpoint import CHECKPOINT_TAG, Checkpoint, read_checkpoint
from federator.server.federation.checkpoint import write_checkpoint as write_checkpoint_files
from federator.server.federation.durability import (
    DurabilityLedger,
    DurabilityListener,
    DurabilityReport,
)
from federator.server.federation.events import FederationStarted, RoundOutcome, RoundStatus
from federator.server.plan import FederationPlan
from federator.server.releases import DeliveryReport, ReleaseSigner, SignedRelease
from federator.server.tracking import _failpoints
from federator.server.tracking import mlflow_io as io
from federator.server.tracking._export import (
    FlavourExports,
    FlavourJob,
    ModelExporter,
    flavour_problem,
)
from federator.server.tracking._records import outcome_record, round_metrics
from federator.server.tracking._run import create_run, reopen_run
from federator.server.tracking._summary import log_summary
from federator.server.tracking._versions import Lineage, Registrar
from federator.server.tracking._worker import OrderedWorker


@dataclass(frozen=True)
class TrackingReport:
    """What was recorded: the run, the version made for each round, the champion, and how
    far behind the rounds the saved state ran."""

    run_id: str
    experiment_id: str
    versions: dict[int, str]
    champion_version: str | None
    ui_command: str
    durability: DurabilityReport


@dataclass
class _Open:
    """What exists once MLflow answered (`open`/`resume`), until `finish`."""

    worker: OrderedWorker
    registrar: Registrar
    ledger: DurabilityLedger
    exports: FlavourExports
    staging: tempfile.TemporaryDirectory[str]


class MlflowTracking:
    """Records a federation in MLflow. ``client`` is an ``MlflowClient`` (injectable);
    ``listener`` hears when rounds are saved and when the round loop waits for that."""

    def __init__(
        self,
        plan: FederationPlan,
        *,
        client: Any,
        code_version: str,
        signer: ReleaseSigner | None = None,
        listener: DurabilityListener | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self._client = client
        self._code_version = code_version
        self._clock = clock
        self._signer = signer
        self._listener = listener
        self._open: _Open | None = None
        self._records: list[dict[str, Any]] = []
        self._release_lock = threading.Lock()
        self._signed: list[SignedRelease] = []
        self._deliveries: list[DeliveryReport] = []
        self._release_steps: set[int] = set()
        self._resume_exports: list[FlavourJob] = []
        self._initial_logged = False
        self.run_id = ""
        self.experiment_id = ""

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self, run: Any, lineage: Lineage, *, saved_through: int = 0) -> _Open:
        self.run_id = run.info.run_id
        self.experiment_id = str(run.info.experiment_id)
        staging = tempfile.TemporaryDirectory(prefix="federator-")
        registrar = Registrar(
            plan=self.plan,
            client=self._client,
            run_id=self.run_id,
            artifact_uri=str(run.info.artifact_uri),
            code_version=self._code_version,
            staging=Path(staging.name),
            signer=self._signer,
            lineage=lineage,
        )
        self._open = _Open(
            worker=OrderedWorker("federator-mlflow"),
            registrar=registrar,
            ledger=DurabilityLedger(
                max_unsaved=self.plan.tracking.max_unsaved_rounds, saved_through=saved_through
            ),
            exports=FlavourExports(
                exporter=ModelExporter(),
                client=self._client,
                run_id=self.run_id,
                model=self.plan.tracking.registered_model,
                task_ref=self.plan.task_ref,
                example=registrar.staging / "example.npy",
                submit=self._submit,
            ),
            staging=staging,
        )
        return self._open

    @property
    def _opened(self) -> _Open:
        if self._open is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return self._open

    def open(self) -> str:
        """Create the experiment, run and registered model now; `TrackingError` if MLflow
        cannot be reached or refuses. Returns the run id."""
        run = create_run(self._client, self.plan, code_version=self._code_version)
        self._start(run, Lineage())
        return self.run_id

    def resume(self, run_id: str) -> Checkpoint | None:
        """Reopen ``run_id`` at its last committed checkpoint and return it (``None``: the run
        crashed before its first commit, and starts again from round 1).

        Refuses a run made with another config (`ConfigError`). Versions registered after the
        checkpoint are deleted and the aliases restored; the checkpoint round's metrics are
        logged if the crash came before they were; flavours not yet exported are queued again.
        """
        run = reopen_run(self._client, self.plan, run_id)
        done = int(run.data.tags.get(CHECKPOINT_TAG, 0))
        checkpoint = self._download_checkpoint(run_id, done) if done else None
        lineage = Lineage.from_dict(dict(checkpoint.lineage)) if checkpoint else Lineage()
        registrar = self._start(run, lineage, saved_through=done).registrar
        registrar.drop_orphans(after_round=done)
        self._records = list(checkpoint.rounds) if checkpoint else []
        steps = self._steps("round/wall_time_s")
        if checkpoint is not None and done not in steps:
            self._log_metrics(dict(checkpoint.metrics), step=done)
        self._initial_logged = 0 in self._steps("val/accuracy")
        self._release_steps = self._steps("release/version")
        self._client.update_run(run_id, status="RUNNING")
        lin = registrar.lineage
        if self._signer is not None and lin.champion and lin.champion_round:
            with self._release_lock:
                self._signed.append(registrar.stored_release(lin.champion, lin.champion_round))
        self._resume_exports = [
            FlavourJob(version=v, round=r, weights=registrar.stage_weights(r))
            for v, r in registrar.without_flavour(through_round=done)
        ]
        return checkpoint

    def _download_checkpoint(self, run_id: str, done: int) -> Checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, f"checkpoints/round-{done:04d}", tmp)
            return read_checkpoint(Path(local))

    def _steps(self, metric: str) -> set[int]:
        return {m.step for m in self._client.get_metric_history(self.run_id, metric)}

    def drain(self, *, on_wait: Callable[[int], None] | None = None) -> None:
        """Wait until every queued write is done (the run stays open; exports go on)."""
        self._opened.worker.wait_idle(on_wait=on_wait)
        self._raise_if_failed()

    def finish(
        self,
        *,
        failed: BaseException | None = None,
        on_wait: Callable[[int], None] | None = None,
        stop_reason: str | None = None,
    ) -> TrackingReport:
        """Queue the closing artifacts, export the flavours still missing (not after a
        failure: a resume does that), drain every write, end the run (tagged with
        ``stop_reason`` when the federation ended before its last round).

        Raises `TrackingError` if any write failed, listing what was not recorded, or if a
        flavour could not be exported (every round is recorded all the same).
        """
        status = (
            "FINISHED"
            if failed is None
            else "KILLED"
            if isinstance(failed, FederationInterrupted)
            else "FAILED"
        )
        opened = self._opened
        champion = opened.registrar.lineage.champion
        records, deliveries = self._records, self._deliveries
        self._submit(
            "plots and round summary",
            lambda: log_summary(
                self._client,
                self.run_id,
                staging=opened.registrar.staging,
                records=records,
                deliveries=deliveries,
                champion=champion,
            ),
        )
        opened.worker.wait_idle()  # every round's job has run, so its export is queued
        if failed is not None:
            opened.exports.abandon()
        flavours = opened.exports.close(
            on_wait=None if on_wait is None else lambda n: on_wait(n + opened.worker.pending)
        )
        if stop_reason:
            reason = stop_reason[: io.TAG_LIMIT]
            self._submit(
                "stop reason",
                lambda: self._client.set_tag(self.run_id, "federator.stopped_early", reason),
            )
        self._submit("end run", lambda: self._client.set_terminated(self.run_id, status=status))
        failure = opened.worker.close(on_wait=on_wait)
        opened.staging.cleanup()
        if failure is not None:
            skipped = ", ".join(failure.skipped) or "nothing else"
            raise TrackingError(
                f"MLflow write '{failure.label}' failed: {failure.error}; not recorded: {skipped}"
            )
        if flavours:
            raise TrackingError(flavour_problem(flavours, self.run_id))
        lin = opened.registrar.lineage
        return TrackingReport(
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            versions=dict(lin.versions),
            champion_version=lin.champion,
            ui_command=self.ui_command(),
            durability=opened.ledger.report(),
        )

    def ui_command(self) -> str:
        """How a person opens this run."""
        tr = self.plan.tracking
        if tr.uri.startswith(("http://", "https://")):
            return f"{tr.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {tr.uri}"

    # -- observer ------------------------------------------------------------------------

    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to record while nodes connect."""

    def on_start(self, event: FederationStarted) -> None:
        opened = self._opened
        # Two examples (batch ≥ 2 keeps the exported batch dimension dynamic).
        np.save(
            opened.registrar.staging / "example.npy",
            np.asarray(event.example_input),
            allow_pickle=False,
        )
        for job in self._resume_exports:
            opened.exports.add(job)
        self._resume_exports = []
        if not self._initial_logged:
            self._initial_logged = True
            initial = {
                "val/accuracy": event.initial_eval.accuracy,
                "val/loss": event.initial_eval.loss,
                "nodes/connected": len(event.nodes),
            }
            self._submit("initial metrics", lambda: self._log_metrics(initial, step=0))

    def on_round(self, outcome: RoundOutcome) -> None:
        """Queue the round's writes; wait while too many rounds are unsaved."""
        self._raise_if_failed()
        ledger = self._opened.ledger
        ledger.ended(outcome.round)
        self._submit(f"round {outcome.round}", lambda: self._record_round(outcome))
        ledger.hold_back(
            outcome.round,
            check=self._raise_if_failed,
            on_wait=self._listener.held_back if self._listener is not None else None,
        )

    def on_release(self, report: DeliveryReport) -> None:
        """Record where a release was installed or refused: ``release/*`` metrics at the
        released round's step for its first push, every push in ``deliveries.json``."""
        self._deliveries.append(report)
        if report.round in self._release_steps:
            return
        self._release_steps.add(report.round)
        metrics: dict[str, float] = {f"release/{s.value}": report.count(s) for s in DeliveryStatus}
        metrics["release/version"] = report.version
        self._submit(
            f"release {report.version} deliveries",
            lambda: self._log_metrics(metrics, step=report.round),
        )

    def take_releases(self) -> list[SignedRelease]:
        """Releases committed since the last call (called from the round loop's thread)."""
        with self._release_lock:
            out, self._signed = self._signed, []
        return out

    # -- jobs (run on the writer thread) -------------------------------------------------

    def _submit(self, label: str, job: Callable[[], None]) -> None:
        self._opened.worker.submit(label, job)

    def _raise_if_failed(self) -> None:
        failure = self._opened.worker.failure()
        if failure is not None:
            raise TrackingError(f"MLflow write '{failure.label}' failed: {failure.error}")

    def _log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        io.log_metrics(
            self._client, self.run_id, metrics, step=step, timestamp_ms=int(self._clock() * 1000)
        )

    def _record_round(self, outcome: RoundOutcome) -> None:
        opened, rnd = self._opened, outcome.round
        registrar = opened.registrar
        version = release = None
        if outcome.status is RoundStatus.COMPLETED:
            version, release = registrar.register(outcome)
            _failpoints.reached("version-registered", rnd)
        self._records.append(outcome_record(outcome, version=version))
        metrics = round_metrics(outcome)
        if outcome.checkpoint is not None:
            self._commit_checkpoint(
                replace(
                    outcome.checkpoint,
                    rounds=list(self._records),
                    metrics=metrics,
                    lineage=registrar.lineage.as_dict(),
                )
            )
        opened.ledger.committed(rnd)
        if self._listener is not None:
            self._listener.saved(rnd)
        self._log_metrics(metrics, step=rnd)
        if release is not None:
            with self._release_lock:
                self._signed.append(release)
        if version is not None:
            weights = registrar.staging / f"round-{rnd:04d}" / "weights.safetensors"
            opened.exports.add(FlavourJob(version=version, round=rnd, weights=weights))

    def _commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        folder = self._opened.registrar.staging / f"checkpoint-{checkpoint.round:04d}"
        write_checkpoint_files(checkpoint, folder)
        self._client.log_artifacts(
            self.run_id, str(folder), artifact_path=f"checkpoints/round-{checkpoint.round:04d}"
        )
        _failpoints.reached("checkpoint-uploaded", checkpoint.round)
        self._client.set_tag(self.run_id, CHECKPOINT_TAG, str(checkpoint.round))
        shutil.rmtree(folder)
