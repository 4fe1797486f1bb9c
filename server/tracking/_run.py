"""Opening a federation's MLflow run: a new one, or an interrupted one to resume."""

from __future__ import annotations

import time
from typing import Any

from federator import ConfigError, TrackingError
from federator.server.plan import FederationPlan
from federator.server.tracking import mlflow_io as io


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
            },
        )
        io.log_params(client, run.info.run_id, plan.flat_params())
        client.log_dict(run.info.run_id, dict(plan.resolved), "federation/config.json")
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
    return run
