"""Opening a federation's MLflow run (a new one, or an interrupted one to resume), what exists
while it is open, and how it ends."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federator import ConfigError, FederationInterrupted, TrackingError
from federator.server.federation.durability import DurabilityLedger, DurabilityReport
from federator.server.plan import FederationPlan
from federator.server.releases import ReleaseService
from federator.server.tracking import mlflow_io as io
from federator.server.tracking._export import FlavourExports, ModelExporter
from federator.server.tracking._records import attack_tags
from federator.server.tracking._versions import Lineage, Registrar
from federator.server.tracking._worker import Job, OrderedWorker

STARTED_BY_TAG = "federator.started_by"


def create_run(client: Any, plan: FederationPlan, *, code_version: str) -> Any:
    """Create the experiment, the run (tagged with what shaped it) and the registered model;
    `TrackingError` if MLflow cannot be reached or refuses."""
    tr = plan.tracking
    io.preflight(tr.uri, artifact_location=tr.artifact_location)
    try:
        experiment = io.ensure_experiment(
            client, tr.experiment, artifact_location=tr.artifact_location
        )
        run = client.create_run(
            experiment,
            run_name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "federator.federation": plan.name,
                "federator.task": plan.task_ref,
                "federator.strategy": plan.strategy.name,
                "federator.config_hash": plan.config_hash,
                "federator.code_version": code_version,
                "federator.config_source": plan.source,
                **({"federator.task_bundle": plan.task_bundle.digest} if plan.task_bundle else {}),
                **({STARTED_BY_TAG: plan.started_by} if plan.started_by else {}),
                **attack_tags(plan),
            },
        )
        io.log_params(client, run.info.run_id, plan.flat_params())
        client.log_dict(run.info.run_id, dict(plan.resolved), "federation/config.json")
        _log_bundle(client, run.info.run_id, plan)
        io.ensure_registered_model(
            client,
            tr.registered_model,
            description=f"Global models of Federator federation {plan.name!r}",
        )
    except TrackingError:
        raise
    except Exception as err:
        raise TrackingError(f"MLflow at {tr.uri} refused to open the run: {err}") from err
    return run


def _log_bundle(client: Any, run_id: str, plan: FederationPlan) -> None:
    """The run's task bundle (the code its models are trained with), beside its config."""
    if plan.task_bundle is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in plan.task_bundle.files().items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, artifact_path="federation/task-bundle")


def reopen_run(client: Any, plan: FederationPlan, run_id: str) -> Any:
    """The run ``run_id``, if it exists and was made with this plan's config."""
    from mlflow.exceptions import MlflowException

    tr = plan.tracking
    io.preflight(tr.uri, artifact_location=tr.artifact_location)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no MLflow run {run_id} at {tr.uri}") from None
    tags = run.data.tags
    if tags.get("federator.config_hash") != plan.config_hash:
        raise ConfigError(
            f"run {run_id} was made with another config (hash "
            f"{tags.get('federator.config_hash', '?')[:12]}, this one "
            f"{plan.config_hash[:12]}); resume with the same config"
        )
    bundle = plan.task_bundle.digest if plan.task_bundle else None
    if tags.get("federator.task_bundle") != bundle:
        raise ConfigError(
            f"run {run_id} was trained with task bundle {tags.get('federator.task_bundle')}, "
            f"this submission carries {bundle}: resume with the same task code"
        )
    return run


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
class Session:
    """What exists once MLflow answered (the run opened or reopened), until it ends: the
    writer, the registrar, the durability ledger, the flavour exports, the staging folder
    and the release service that promoted versions go to (``None``: releases are off)."""

    worker: OrderedWorker
    registrar: Registrar
    ledger: DurabilityLedger
    exports: FlavourExports
    staging: tempfile.TemporaryDirectory[str]
    releases: ReleaseService | None


def start_session(
    run: Any,
    *,
    plan: FederationPlan,
    client: Any,
    code_version: str,
    lineage: Lineage,
    releases: ReleaseService | None,
    saved_through: int,
    submit: Callable[[str, Job], None],
) -> Session:
    """The session of ``run``; ``submit`` queues a job on the session's writer."""
    staging = tempfile.TemporaryDirectory(prefix="federator-")
    run_id = str(run.info.run_id)
    registrar = Registrar(
        plan=plan,
        client=client,
        run_id=run_id,
        artifact_uri=str(run.info.artifact_uri),
        code_version=code_version,
        staging=Path(staging.name),
        releases=releases,
        lineage=lineage,
    )
    return Session(
        worker=OrderedWorker("federator-mlflow"),
        registrar=registrar,
        ledger=DurabilityLedger(
            max_unsaved=plan.tracking.max_unsaved_rounds, saved_through=saved_through
        ),
        exports=FlavourExports(
            exporter=ModelExporter(),
            client=client,
            run_id=run_id,
            model=plan.tracking.registered_model,
            task_ref=plan.task_ref,
            example=registrar.staging / "example.npy",
            submit=submit,
            enabled=plan.tracking.export_flavour,
        ),
        staging=staging,
        releases=releases,
    )


def end_status(failed: BaseException | None) -> str:
    """The MLflow status a run ends with after ``failed`` (``None``: it did not fail)."""
    if failed is None:
        return "FINISHED"
    return "KILLED" if isinstance(failed, FederationInterrupted) else "FAILED"


def ui_command(uri: str, experiment_id: str, run_id: str) -> str:
    """How a person opens run ``run_id`` of the store at ``uri``."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}"
