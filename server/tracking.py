"""MLflow hooks: one run per federation, metrics per round, a model version per global model.

`MlflowTracking` is an observer of the round loop. The run is opened synchronously (so an
unreachable store stops the federation before it starts); everything after that is queued on
an `OrderedWorker`, off the rounds' critical path, and drained by `finish` — on success and
on failure alike — so nothing already computed is lost on exit.

Each completed round becomes a version of the registered model, created with all its lineage
tags in one call (never half-registered): federation run, round, parent version, participants
and their example counts, config hash, code version, strategy, gate decision and reasons.
Its artifacts hold the weights as safetensors, a ``lineage.json``, and an MLflow pytorch
flavour (pt2 export, no pickle) that ``mlflow.pytorch.load_model`` loads.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federator import FederationInterrupted, TrackingError, __version__
from federator.client.weights import save_safetensors
from federator.server import _mlflow_io as io
from federator.server._export import ModelExporter
from federator.server._worker import OrderedWorker
from federator.server.events import FederationStarted, RoundOutcome, RoundStatus
from federator.server.plan import FederationPlan
from federator.server.plots import plot_clients, plot_rounds
from federator.server.releases import DeliveryReport, ReleaseSigner, SignedRelease

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class TrackingReport:
    """What was recorded: the run, the version made for each round, the champion."""

    run_id: str
    experiment_id: str
    versions: dict[int, str]
    champion_version: str | None
    ui_command: str


@dataclass
class _Lineage:
    parent_version: str | None = None
    versions: dict[int, str] = field(default_factory=dict)
    champion: str | None = None


def _round_metrics(o: RoundOutcome) -> dict[str, float]:
    m: dict[str, float] = {
        "round/sampled": o.sampled,
        "round/participants": o.participants,
        "round/refused": len(o.refusals),
        "round/wall_time_s": o.wall_time,
        "round/skipped": float(o.status is RoundStatus.SKIPPED),
    }
    if o.server_eval is not None:
        m["val/accuracy"] = o.server_eval.accuracy
        m["val/loss"] = o.server_eval.loss
    for k, v in o.train_metrics.items():
        m[f"train/{k.removeprefix('train-')}"] = v
    for k, v in o.eval_metrics.items():
        m[f"clients/{k}"] = v
    if o.decision is not None:
        m["gate/promoted"] = float(o.decision.promoted)
    for c in o.train_clients:
        m[f"client/{c.pseudonym}/num_examples"] = c.num_examples
        for k, v in c.metrics.items():
            m[f"client/{c.pseudonym}/{k.replace('-', '_')}"] = v
    for c in o.eval_clients:
        for k, v in c.metrics.items():
            m[f"client/{c.pseudonym}/val_{k}"] = v
    return m


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
        # Created by `open` once MLflow answered, released by `finish`.
        self._worker: OrderedWorker | None = None
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._lineage = _Lineage()
        self._outcomes: list[RoundOutcome] = []
        self._exporter = ModelExporter()
        self._signer = signer
        self._release_lock = threading.Lock()
        self._signed: list[SignedRelease] = []
        self._deliveries: list[DeliveryReport] = []
        self.run_id = ""
        self.experiment_id = ""
        self._artifact_uri = ""

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> str:
        """Create the experiment, run and registered model now; `TrackingError` if MLflow
        cannot be reached or refuses. Returns the run id."""
        plan, tr = self.plan, self.plan.tracking
        io.preflight(tr.uri, artifact_location=tr.artifact_location)
        try:
            self.experiment_id = io.ensure_experiment(
                self._client, tr.experiment, artifact_location=tr.artifact_location
            )
            run = self._client.create_run(
                self.experiment_id,
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
            self.run_id = run.info.run_id
            self._artifact_uri = str(run.info.artifact_uri)
            io.log_params(self._client, self.run_id, plan.flat_params())
            self._client.log_dict(self.run_id, dict(plan.resolved), "federation/config.json")
            io.ensure_registered_model(
                self._client,
                tr.registered_model,
                description=f"Global models of Federator federation {plan.name!r}",
            )
        except TrackingError:
            raise
        except Exception as err:
            raise TrackingError(f"MLflow at {tr.uri} refused to open the run: {err}") from err
        self._worker = OrderedWorker("federator-mlflow")
        self._staging = tempfile.TemporaryDirectory(prefix="federator-")
        return self.run_id

    def finish(
        self, *, failed: BaseException | None = None, on_wait: Callable[[int], None] | None = None
    ) -> TrackingReport:
        """Queue the closing artifacts, drain every queued write, end the run.

        Raises `TrackingError` if any write failed, listing what was not recorded.
        """
        status = (
            "FINISHED"
            if failed is None
            else "KILLED"
            if isinstance(failed, FederationInterrupted)
            else "FAILED"
        )
        if self._outcomes:
            self._submit("plots", self._log_plots)
        self._submit("round summary", self._log_summary)
        self._submit("end run", lambda: self._client.set_terminated(self.run_id, status=status))
        failure = self._opened_worker().close(on_wait=on_wait)
        self._exporter.close()
        if self._staging is not None:
            self._staging.cleanup()
        if failure is not None:
            skipped = ", ".join(failure.skipped) or "nothing else"
            raise TrackingError(
                f"MLflow write '{failure.label}' failed: {failure.error}; not recorded: {skipped}"
            )
        return TrackingReport(
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            versions=dict(self._lineage.versions),
            champion_version=self._lineage.champion,
            ui_command=self.ui_command(),
        )

    def ui_command(self) -> str:
        """How a person opens this run."""
        tr = self.plan.tracking
        if tr.uri.startswith(("http://", "https://")):
            return f"{tr.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {tr.uri}"

    @property
    def pending(self) -> int:
        return self._worker.pending if self._worker else 0

    def _opened_worker(self) -> OrderedWorker:
        if self._worker is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return self._worker

    def _staging_dir(self) -> Path:
        if self._staging is None:
            raise RuntimeError("MlflowTracking.open() must succeed before it records anything")
        return Path(self._staging.name)

    # -- observer ------------------------------------------------------------------------

    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to record while nodes connect."""

    def on_start(self, event: FederationStarted) -> None:
        # Two examples (batch ≥ 2 keeps the exported batch dimension dynamic).
        np.save(
            self._staging_dir() / "example.npy", np.asarray(event.example_input), allow_pickle=False
        )
        initial = {
            "val/accuracy": event.initial_eval.accuracy,
            "val/loss": event.initial_eval.loss,
            "nodes/connected": len(event.nodes),
        }
        self._submit("initial metrics", lambda: self._log_metrics(initial, step=0))

    def on_round(self, outcome: RoundOutcome) -> None:
        self._raise_if_failed()
        self._outcomes.append(outcome)
        metrics = _round_metrics(outcome)
        self._submit(
            f"round {outcome.round} metrics", lambda: self._log_metrics(metrics, step=outcome.round)
        )
        if outcome.status is RoundStatus.COMPLETED:
            self._submit(f"round {outcome.round} model version", lambda: self._register(outcome))

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

    def _model_dir(self, outcome: RoundOutcome, lineage: dict[str, Any]) -> Path:
        assert outcome.arrays is not None
        stem = self._staging_dir() / f"round-{outcome.round:04d}"
        weights = stem.with_suffix(".safetensors")
        save_safetensors(outcome.arrays, weights)
        out = self._exporter.export(
            task_ref=self.plan.task_ref,
            weights=weights,
            example=self._staging_dir() / "example.npy",
            out=stem,
        )
        weights.replace(out / "weights.safetensors")
        (out / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True))
        return out

    def _register(self, outcome: RoundOutcome) -> None:
        plan, lin = self.plan, self._lineage
        decision, ev = outcome.decision, outcome.server_eval
        assert decision is not None
        assert ev is not None
        examples = {c.pseudonym: c.num_examples for c in outcome.train_clients}
        lineage = {
            "federation": plan.name,
            "federation_run_id": self.run_id,
            "round": outcome.round,
            "parent_version": lin.parent_version,
            "participants": examples,
            "config_hash": plan.config_hash,
            "code_version": self._code_version,
            "federator_version": __version__,
            "strategy": plan.strategy.name,
            "gate": {"decision": decision.verdict.value, "reasons": list(decision.reasons)},
            "val": {"accuracy": ev.accuracy, "loss": ev.loss},
        }
        out = self._model_dir(outcome, lineage)
        artifact_path = f"models/round-{outcome.round:04d}"
        self._client.log_artifacts(self.run_id, str(out), artifact_path=artifact_path)
        tags = {
            "federator.federation": plan.name,
            "federator.run_id": self.run_id,
            "federator.round": str(outcome.round),
            "federator.parent_version": lin.parent_version or "none",
            "federator.participants": io.list_tag(sorted(examples), what="participants"),
            "federator.participant_examples": io.list_tag(examples, what="participants"),
            "federator.num_participants": str(len(examples)),
            "federator.num_examples": str(sum(examples.values())),
            "federator.config_hash": plan.config_hash,
            "federator.code_version": self._code_version,
            "federator.strategy": plan.strategy.name,
            "federator.gate.decision": decision.verdict.value,
            "federator.gate.reasons": "; ".join(decision.reasons)[: io.TAG_LIMIT],
            "federator.val_accuracy": f"{ev.accuracy:.6f}",
            "federator.val_loss": f"{ev.loss:.6f}",
        }
        mv = self._client.create_model_version(
            plan.tracking.registered_model,
            source=f"{self._artifact_uri}/{artifact_path}",
            run_id=self.run_id,
            tags=tags,
            description=f"{plan.name} round {outcome.round}: {decision.verdict.value}",
        )
        version = str(mv.version)
        self._client.set_registered_model_alias(plan.tracking.registered_model, CHALLENGER, version)
        if decision.promoted:
            self._client.set_registered_model_alias(
                plan.tracking.registered_model, CHAMPION, version
            )
            if self._signer is not None:
                self._release(
                    outcome,
                    version=int(version),
                    previous=lin.champion,
                    folder=out,
                    artifact_path=artifact_path,
                )
            lin.champion = version
        lin.versions[outcome.round] = version
        lin.parent_version = version

    def _release(
        self,
        outcome: RoundOutcome,
        *,
        version: int,
        previous: str | None,
        folder: Path,
        artifact_path: str,
    ) -> None:
        """Sign the new champion, keep statement and envelope on its version, queue it."""
        assert self._signer is not None
        assert outcome.server_eval is not None
        assert outcome.decision is not None
        plan = self.plan
        release = self._signer.sign(
            model=plan.tracking.registered_model,
            version=version,
            previous_version=int(previous) if previous else None,
            round=outcome.round,
            federation=plan.name,
            run_id=self.run_id,
            task=plan.task_ref,
            reasons=outcome.decision.reasons,
            metrics={"accuracy": outcome.server_eval.accuracy, "loss": outcome.server_eval.loss},
            folder=folder,
        )
        signed = self._staging_dir() / f"release-{version}"
        signed.mkdir()
        (signed / "statement.json").write_bytes(release.statement)
        (signed / "envelope.json").write_text(release.envelope)
        self._client.log_artifacts(
            self.run_id, str(signed), artifact_path=f"{artifact_path}/release"
        )
        self._client.set_model_version_tag(
            plan.tracking.registered_model,
            str(version),
            "federator.release.key_id",
            self._signer.key_id,
        )
        with self._release_lock:
            self._signed.append(release)

    def take_releases(self) -> list[SignedRelease]:
        """Releases signed since the last call (called from the round loop's thread)."""
        with self._release_lock:
            out, self._signed = self._signed, []
        return out

    def on_release(self, report: DeliveryReport) -> None:
        """Record where a release was installed or refused."""
        self._deliveries.append(report)
        step = self._outcomes[-1].round if self._outcomes else 0
        metrics: dict[str, float] = {
            f"release/{s}": report.count(s) for s in ("installed", "refused", "unreachable")
        }
        metrics["release/version"] = report.version
        self._submit(
            f"release {report.version} deliveries", lambda: self._log_metrics(metrics, step=step)
        )

    def drain(self, *, on_wait: Callable[[int], None] | None = None) -> None:
        """Wait until every queued write is done (the run stays open)."""
        self._opened_worker().wait_idle(on_wait=on_wait)
        self._raise_if_failed()

    def _log_plots(self) -> None:
        folder = self._staging_dir() / "plots"
        folder.mkdir(exist_ok=True)
        plot_rounds(self._outcomes, folder / "accuracy.png")
        plot_clients(self._outcomes, folder / "client_accuracy.png")
        self._client.log_artifacts(self.run_id, str(folder), artifact_path="plots")

    def _log_summary(self) -> None:
        rounds = [
            {
                "round": o.round,
                "status": o.status.value,
                "sampled": o.sampled,
                "participants": [c.pseudonym for c in o.train_clients],
                "refusals": [
                    {"client": r.pseudonym, "phase": r.phase, "reason": r.reason}
                    for r in o.refusals
                ],
                "val": (
                    {"accuracy": o.server_eval.accuracy, "loss": o.server_eval.loss}
                    if o.server_eval
                    else None
                ),
                "gate": (
                    {"decision": o.decision.verdict.value, "reasons": list(o.decision.reasons)}
                    if o.decision
                    else None
                ),
                "version": self._lineage.versions.get(o.round),
                "skip_reason": o.skip_reason,
                "wall_time_s": o.wall_time,
            }
            for o in self._outcomes
        ]
        self._client.log_dict(self.run_id, {"rounds": rounds}, "federation/rounds.json")
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
        if self._lineage.champion is not None:
            self._client.set_tag(self.run_id, "federator.champion_version", self._lineage.champion)
