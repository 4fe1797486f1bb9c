"""MLflow hooks: one run per federation, metrics per round, a model version per global model.

`MlflowTracking` is an observer of the round loop. The run is opened (or, to resume, reopened)
synchronously, so an unreachable store stops the federation before it starts. After that, two
background threads write:

* the *writer* (`OrderedWorker`) does what a resume needs, one job per round, in order:
  register the model version with its weights and lineage (a promoted one signed by the
  `ReleaseService`), write the round's checkpoint — as the `Checkpointer` assembles it — and
  commit it with the run tag ``federator.checkpoint_round``, log the round's metrics, and
  only then hand the signed release over to the release service, so no node ever gets a
  version that a crash could undo. These writes take tens of milliseconds; `DurabilityLedger`
  makes the round loop wait whenever more than ``tracking.max_unsaved_rounds`` finished rounds
  are still uncommitted (back-pressure), so a crash loses at most the round in flight.
* the *exporter* (`FlavourExports`) attaches the pt2 pytorch flavour to each version when the
  low-priority export process gets to it, under full load perhaps only after the last round.
  Nothing waits for it but the end of the run, and no resume depends on it.

Tracking's own checkpoint parts are the lineage of the registered versions and the journal of
every round (`Component.LINEAGE`, `Component.RECORDS`). A crash before a commit leaves at most
an orphan version, which a resume deletes; a crash after it leaves metrics that a resume logs
from the checkpoint, and versions without a flavour that a resume exports. Every round is
therefore recorded exactly once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from federator import TrackingError
from federator.server.federation.checkpoint import (
    CHECKPOINT_TAG,
    Checkpoint,
    Checkpointer,
    Component,
    Taken,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from federator.server.federation.durability import DurabilityListener
from federator.server.federation.events import FederationStarted, RoundOutcome, RoundStatus
from federator.server.plan import FederationPlan
from federator.server.releases import DeliveryReport, ReleaseService
from federator.server.tracking import _failpoints
from federator.server.tracking import mlflow_io as io
from federator.server.tracking._export import FlavourJob, flavour_problem
from federator.server.tracking._records import (
    RELEASE_VERSION,
    RoundJournal,
    initial_metrics,
    outcome_record,
    release_metrics,
    round_metrics,
)
from federator.server.tracking._run import (
    Session,
    TrackingReport,
    create_run,
    end_status,
    reopen_run,
    start_session,
    ui_command,
)
from federator.server.tracking._summary import log_summary
from federator.server.tracking._versions import Lineage
from federator.server.tracking.warm_start import warm_start_arrays


class MlflowTracking:
    """Records a federation in MLflow. ``client`` is an ``MlflowClient`` (injectable); the
    lineage and the round journal register with ``checkpointer``; ``listener`` hears when
    rounds are saved and when the round loop waits for that."""

    def __init__(
        self,
        plan: FederationPlan,
        *,
        client: Any,
        code_version: str,
        checkpointer: Checkpointer,
        listener: DurabilityListener | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self._client = client
        self._code_version = code_version
        self._clock = clock
        self._listener = listener
        self._checkpointer = checkpointer
        self._lineage = Lineage()
        self._warm_start: str | None = None
        self._journal = RoundJournal()
        checkpointer.register(Component.LINEAGE, self._lineage, taken=Taken.AT_COMMIT)
        checkpointer.register(Component.RECORDS, self._journal, taken=Taken.AT_COMMIT)
        self._open: Session | None = None
        self._deliveries: list[DeliveryReport] = []
        self._resume_exports: list[FlavourJob] = []
        self._initial_logged = False
        self.run_id = ""
        self.experiment_id = ""

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self, run: Any, *, releases: ReleaseService | None, saved_through: int = 0) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = str(run.info.experiment_id)
        self._open = start_session(
            run,
            plan=self.plan,
            client=self._client,
            code_version=self._code_version,
            lineage=self._lineage,
            releases=releases,
            saved_through=saved_through,
            submit=self._submit,
        )

    @property
    def _opened(self) -> Session:
        if self._open is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return self._open

    def open(self, *, releases: ReleaseService | None = None) -> str:
        """Create the experiment, run and registered model now; `TrackingError` if MLflow
        cannot be reached or refuses. Promoted versions are signed by ``releases`` and handed
        to it once committed. Returns the run id."""
        run = create_run(self._client, self.plan, code_version=self._code_version)
        self._start(run, releases=releases)
        if self._warm_start is not None:
            self._client.set_tag(self.run_id, "federator.warm_start", self._warm_start)
        return self.run_id

    def warm_start(self, ref: str, *, like: ArrayRecord) -> ArrayRecord:
        """Start from registered version ``ref`` (`federator.server.tracking.warm_start`):
        its weights, returned as the round-0 model; it becomes the parent of this run's first
        version, and `open` tags the run with it. Call it before `open`: a version that does
        not exist or fit is a `ConfigError` before any run is made."""
        version, arrays = warm_start_arrays(
            self._client, self.plan.tracking.registered_model, ref, like=like
        )
        self._lineage.parent_version = self._warm_start = version
        return arrays

    def reopen(self, run_id: str, *, releases: ReleaseService | None = None) -> Checkpoint | None:
        """Reopen ``run_id`` and read its last committed checkpoint (``None``: the run crashed
        before its first commit, and starts again from round 1); refuses a run made with
        another config (`ConfigError`). Restore the checkpoint, then call `resume`."""
        run = reopen_run(self._client, self.plan, run_id)
        done = int(run.data.tags.get(CHECKPOINT_TAG, 0))
        checkpoint = self._download_checkpoint(run_id, done) if done else None
        self._start(run, releases=releases, saved_through=done)
        return checkpoint

    def resume(self, *, after_round: int) -> None:
        """Tidy the reopened run up to its checkpoint (lineage and journal restored): delete
        versions registered after ``after_round`` and restore the aliases, log that round's
        metrics if the crash came before they were, queue flavours not yet exported again,
        and offer the champion's stored release to the release service again."""
        opened = self._opened
        registrar = opened.registrar
        registrar.drop_orphans(after_round=after_round)
        if after_round and after_round not in self._steps("round/wall_time_s"):
            self._log_metrics(self._journal.metrics, step=after_round)
        self._initial_logged = 0 in self._steps("val/accuracy")
        self._client.update_run(self.run_id, status="RUNNING")
        lin = self._lineage
        if opened.releases is not None:
            stored = (
                registrar.stored_release(lin.champion, lin.champion_round)
                if lin.champion and lin.champion_round
                else None
            )
            opened.releases.resume(stored, pushed_rounds=self._steps(RELEASE_VERSION))
        self._resume_exports = [
            FlavourJob(version=v, round=r, weights=registrar.stage_weights(r))
            for v, r in registrar.without_flavour(through_round=after_round)
        ]

    def _download_checkpoint(self, run_id: str, done: int) -> Checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, checkpoint_path(done), tmp)
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
        status = end_status(failed)
        opened = self._opened
        # Records and champion are read when the job runs, after every round's job.
        self._submit(
            "plots and round summary",
            lambda: log_summary(
                self._client,
                self.run_id,
                staging=opened.registrar.staging,
                records=self._journal.records,
                deliveries=self._deliveries,
                champion=self._lineage.champion,
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
        lin = self._lineage
        return TrackingReport(
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            versions=dict(lin.versions),
            champion_version=lin.champion,
            ui_command=ui_command(self.plan.tracking.uri, self.experiment_id, self.run_id),
            durability=opened.ledger.report(),
        )

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
            initial = initial_metrics(event)
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
        """Record where a release was installed or refused (the release service reports each
        push): ``release/*`` metrics at the released round's step for its first push, every
        push in ``deliveries.json``."""
        self._deliveries.append(report)
        if not report.first_push:
            return
        metrics = release_metrics(report)
        self._submit(
            f"release {report.version} deliveries",
            lambda: self._log_metrics(metrics, step=report.round),
        )

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
        metrics = round_metrics(outcome)
        self._journal.add(outcome_record(outcome, version=version), metrics=metrics)
        if outcome.checkpoint is not None:
            self._commit_checkpoint(self._checkpointer.complete(outcome.checkpoint))
        opened.ledger.committed(rnd)
        if self._listener is not None:
            self._listener.saved(rnd)
        self._log_metrics(metrics, step=rnd)
        if release is not None and opened.releases is not None:
            opened.releases.committed(release)  # only now, after the commit
        if version is not None:
            weights = registrar.staging / f"round-{rnd:04d}" / "weights.safetensors"
            opened.exports.add(FlavourJob(version=version, round=rnd, weights=weights))

    def _commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        folder = self._opened.registrar.staging / f"checkpoint-{checkpoint.round:04d}"
        write_checkpoint(checkpoint, folder)
        self._client.log_artifacts(
            self.run_id, str(folder), artifact_path=checkpoint_path(checkpoint.round)
        )
        _failpoints.reached("checkpoint-uploaded", checkpoint.round)
        self._client.set_tag(self.run_id, CHECKPOINT_TAG, str(checkpoint.round))
        shutil.rmtree(folder)


__all__ = ["MlflowTracking", "TrackingReport"]
