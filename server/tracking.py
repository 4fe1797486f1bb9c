"""MLflow hooks: one run per federation, metrics per round, a model version per global model.

`MlflowTracking` is an observer of the round loop. The run is opened (or, to resume, reopened)
synchronously, so an unreachable store stops the federation before it starts; everything after
that is queued on an `OrderedWorker`, off the rounds' critical path, and drained by `finish` —
on success and on failure alike — so nothing already computed is lost on exit.

Each round is one job, in this order: register the model version (see `_versions`), write the
round's checkpoint and commit it with the run tag ``federator.checkpoint_round``, then log the
round's metrics. A crash before the commit leaves at most an orphan version, which a resume
deletes; a crash after it leaves metrics a resume logs again from the checkpoint. Every round
is therefore recorded exactly once.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from federator import ConfigError, FederationInterrupted, TrackingError
from federator.server import _mlflow_io as io
from federator.server._export import ModelExporter
from federator.server._records import outcome_from_record, outcome_record, round_metrics
from federator.server._versions import Lineage, Registrar
from federator.server._worker import OrderedWorker
from federator.server.checkpoint import CHECKPOINT_TAG, Checkpoint, read_checkpoint
from federator.server.checkpoint import write_checkpoint as write_checkpoint_files
from federator.server.events import FederationStarted, RoundOutcome, RoundStatus
from federator.server.plan import FederationPlan
from federator.server.plots import plot_clients, plot_privacy, plot_rounds
from federator.server.releases import DeliveryReport, ReleaseSigner, SignedRelease


@dataclass(frozen=True)
class TrackingReport:
    """What was recorded: the run, the version made for each round, the champion."""

    run_id: str
    experiment_id: str
    versions: dict[int, str]
    champion_version: str | None
    ui_command: str


class MlflowTracking:
    """Records a federation in MLflow. ``client`` is an ``MlflowClient`` (injectable)."""

    def __init__(
        self,
        plan: FederationPlan,
        *,
        client: Any,
        code_version: str,
        signer: ReleaseSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self._client = client
        self._code_version = code_version
        self._clock = clock
        self._signer = signer
        # Created once MLflow answered (`open`/`resume`), released by `finish`.
        self._worker: OrderedWorker | None = None
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._registrar: Registrar | None = None
        self._records: list[dict[str, Any]] = []
        self._release_lock = threading.Lock()
        self._signed: list[SignedRelease] = []
        self._deliveries: list[DeliveryReport] = []
        self._resumed = False
        self.run_id = ""
        self.experiment_id = ""

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self, run: Any, lineage: Lineage) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = str(run.info.experiment_id)
        self._staging = tempfile.TemporaryDirectory(prefix="federator-")
        self._registrar = Registrar(
            plan=self.plan,
            client=self._client,
            run_id=self.run_id,
            artifact_uri=str(run.info.artifact_uri),
            code_version=self._code_version,
            staging=Path(self._staging.name),
            exporter=ModelExporter(),
            signer=self._signer,
            lineage=lineage,
        )
        self._worker = OrderedWorker("federator-mlflow")

    def open(self) -> str:
        """Create the experiment, run and registered model now; `TrackingError` if MLflow
        cannot be reached or refuses. Returns the run id."""
        plan, tr = self.plan, self.plan.tracking
        io.preflight(tr.uri, artifact_location=tr.artifact_location)
        try:
            experiment = io.ensure_experiment(
                self._client, tr.experiment, artifact_location=tr.artifact_location
            )
            run = self._client.create_run(
                experiment,
                run_name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={
                    "federator.federation": plan.name,
                    "federator.task": plan.task_ref,
                    "federator.strategy": plan.strategy.name,
                    "federator.config_hash": plan.config_hash,
                    "federator.code_version": self._code_version,
                    "federator.config_source": plan.source,
                },
            )
            io.log_params(self._client, run.info.run_id, plan.flat_params())
            self._client.log_dict(run.info.run_id, dict(plan.resolved), "federation/config.json")
            io.ensure_registered_model(
                self._client,
                tr.registered_model,
                description=f"Global models of Federator federation {plan.name!r}",
            )
        except TrackingError:
            raise
        except Exception as err:
            raise TrackingError(f"MLflow at {tr.uri} refused to open the run: {err}") from err
        self._start(run, Lineage())
        return self.run_id

    def resume(self, run_id: str) -> Checkpoint:
        """Reopen ``run_id`` at its last committed checkpoint and return it.

        Refuses a run made with another config (`ConfigError`) or without a checkpoint.
        Versions registered after the checkpoint are deleted and the aliases restored; the
        checkpoint round's metrics are logged if the crash came before they were.
        """
        from mlflow.exceptions import MlflowException

        plan, tr = self.plan, self.plan.tracking
        io.preflight(tr.uri, artifact_location=tr.artifact_location)
        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"no MLflow run {run_id} at {tr.uri}") from None
        tags = run.data.tags
        if tags.get("federator.config_hash") != plan.config_hash:
            raise ConfigError(
                f"run {run_id} was made with another config (hash "
                f"{tags.get('federator.config_hash', '?')[:12]}, this one "
                f"{plan.config_hash[:12]}); resume with the same config"
            )
        if CHECKPOINT_TAG not in tags:
            raise TrackingError(f"run {run_id} has no checkpoint to resume from")
        done = int(tags[CHECKPOINT_TAG])
        with tempfile.TemporaryDirectory() as tmp:
            local = self._client.download_artifacts(run_id, f"checkpoints/round-{done:04d}", tmp)
            checkpoint = read_checkpoint(Path(local))
        self._start(run, Lineage.from_dict(dict(checkpoint.lineage)))
        registrar = self._opened_registrar()
        registrar.drop_orphans(after_round=done)
        self._records = list(checkpoint.rounds)
        steps = {m.step for m in self._client.get_metric_history(run_id, "round/wall_time_s")}
        if done not in steps:
            self._log_metrics(dict(checkpoint.metrics), step=done)
        self._client.update_run(run_id, status="RUNNING")
        lin = registrar.lineage
        if self._signer is not None and lin.champion and lin.champion_round:
            with self._release_lock:
                self._signed.append(registrar.stored_release(lin.champion, lin.champion_round))
        self._resumed = True
        return checkpoint

    def drain(self, *, on_wait: Callable[[int], None] | None = None) -> None:
        """Wait until every queued write is done (the run stays open)."""
        self._opened_worker().wait_idle(on_wait=on_wait)
        self._raise_if_failed()

    def finish(
        self,
        *,
        failed: BaseException | None = None,
        on_wait: Callable[[int], None] | None = None,
        stop_reason: str | None = None,
    ) -> TrackingReport:
        """Queue the closing artifacts, drain every queued write, end the run (tagged with
        ``stop_reason`` when the federation ended before its last round).

        Raises `TrackingError` if any write failed, listing what was not recorded.
        """
        status = (
            "FINISHED"
            if failed is None
            else "KILLED"
            if isinstance(failed, FederationInterrupted)
            else "FAILED"
        )
        self._submit("plots and round summary", self._log_summary)
        if stop_reason:
            reason = stop_reason[: io.TAG_LIMIT]
            self._submit(
                "stop reason",
                lambda: self._client.set_tag(self.run_id, "federator.stopped_early", reason),
            )
        self._submit("end run", lambda: self._client.set_terminated(self.run_id, status=status))
        failure = self._opened_worker().close(on_wait=on_wait)
        registrar = self._opened_registrar()
        registrar.exporter.close()
        if self._staging is not None:
            self._staging.cleanup()
        if failure is not None:
            skipped = ", ".join(failure.skipped) or "nothing else"
            raise TrackingError(
                f"MLflow write '{failure.label}' failed: {failure.error}; not recorded: {skipped}"
            )
        lin = registrar.lineage
        return TrackingReport(
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            versions=dict(lin.versions),
            champion_version=lin.champion,
            ui_command=self.ui_command(),
        )

    def ui_command(self) -> str:
        """How a person opens this run."""
        tr = self.plan.tracking
        if tr.uri.startswith(("http://", "https://")):
            return f"{tr.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {tr.uri}"

    def _opened_worker(self) -> OrderedWorker:
        if self._worker is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return self._worker

    def _opened_registrar(self) -> Registrar:
        if self._registrar is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return self._registrar

    # -- observer ------------------------------------------------------------------------

    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to record while nodes connect."""

    def on_start(self, event: FederationStarted) -> None:
        # Two examples (batch ≥ 2 keeps the exported batch dimension dynamic).
        np.save(
            self._opened_registrar().staging / "example.npy",
            np.asarray(event.example_input),
            allow_pickle=False,
        )
        if not self._resumed:
            initial = {
                "val/accuracy": event.initial_eval.accuracy,
                "val/loss": event.initial_eval.loss,
                "nodes/connected": len(event.nodes),
            }
            self._submit("initial metrics", lambda: self._log_metrics(initial, step=0))

    def on_round(self, outcome: RoundOutcome) -> None:
        self._raise_if_failed()
        self._submit(f"round {outcome.round}", lambda: self._record_round(outcome))

    def on_release(self, report: DeliveryReport) -> None:
        """Record where a release was installed or refused."""
        self._deliveries.append(report)
        step = self._records[-1]["round"] if self._records else 0
        metrics: dict[str, float] = {
            f"release/{s}": report.count(s) for s in ("installed", "refused", "unreachable")
        }
        metrics["release/version"] = report.version
        self._submit(
            f"release {report.version} deliveries", lambda: self._log_metrics(metrics, step=step)
        )

    def take_releases(self) -> list[SignedRelease]:
        """Releases signed since the last call (called from the round loop's thread)."""
        with self._release_lock:
            out, self._signed = self._signed, []
        return out

    # -- jobs (run on the worker thread) -------------------------------------------------

    def _submit(self, label: str, job: Callable[[], None]) -> None:
        self._opened_worker().submit(label, job)

    def _raise_if_failed(self) -> None:
        failure = self._opened_worker().failure()
        if failure is not None:
            raise TrackingError(f"MLflow write '{failure.label}' failed: {failure.error}")

    def _log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        io.log_metrics(
            self._client, self.run_id, metrics, step=step, timestamp_ms=int(self._clock() * 1000)
        )

    def _record_round(self, outcome: RoundOutcome) -> None:
        registrar = self._opened_registrar()
        version = None
        if outcome.status is RoundStatus.COMPLETED:
            version, release = registrar.register(outcome)
            if release is not None:
                with self._release_lock:
                    self._signed.append(release)
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
        self._log_metrics(metrics, step=outcome.round)

    def _commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        folder = self._opened_registrar().staging / f"checkpoint-{checkpoint.round:04d}"
        write_checkpoint_files(checkpoint, folder)
        self._client.log_artifacts(
            self.run_id, str(folder), artifact_path=f"checkpoints/round-{checkpoint.round:04d}"
        )
        self._client.set_tag(self.run_id, CHECKPOINT_TAG, str(checkpoint.round))

    def _log_summary(self) -> None:
        outcomes = [outcome_from_record(r) for r in self._records]
        if outcomes:
            folder = self._opened_registrar().staging / "plots"
            folder.mkdir(exist_ok=True)
            plot_rounds(outcomes, folder / "accuracy.png")
            plot_clients(outcomes, folder / "client_accuracy.png")
            if any(o.privacy for o in outcomes) or any(
                "dp-epsilon" in c.metrics for o in outcomes for c in o.train_clients
            ):
                plot_privacy(outcomes, folder / "privacy_epsilon.png")
            self._client.log_artifacts(self.run_id, str(folder), artifact_path="plots")
        self._client.log_dict(self.run_id, {"rounds": self._records}, "federation/rounds.json")
        if self._deliveries:
            deliveries = [
                {
                    "version": r.version,
                    "round": r.round,
                    "nodes": [
                        {"client": d.pseudonym, "status": d.status, "reason": d.reason}
                        for d in r.deliveries
                    ],
                }
                for r in self._deliveries
            ]
            self._client.log_dict(
                self.run_id, {"deliveries": deliveries}, "releases/deliveries.json"
            )
        champion = self._opened_registrar().lineage.champion
        if champion is not None:
            self._client.set_tag(self.run_id, "federator.champion_version", champion)
