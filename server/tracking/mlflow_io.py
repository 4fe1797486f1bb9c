"""Low-level MLflow calls Federator makes, each raising `TrackingError` with a readable cause."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from federator import TrackingError

TAG_LIMIT = 4000  # MLflow caps tag values; longer lists go to an artifact instead


def quiet_mlflow_env() -> None:
    """Sensible defaults for a CLI: fail in seconds, not minutes, when a server is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def preflight(uri: str, *, artifact_location: str | None, timeout: float = 5.0) -> None:
    """Check the tracking store can be reached before anything starts."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow at {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"cannot reach MLflow at {uri}: {reason}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"cannot create {db.parent} for the MLflow store: {err.strerror}"
            ) from None
    if artifact_location is not None:
        try:
            Path(artifact_location).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"cannot create artifact folder {artifact_location}: {err.strerror}"
            ) from None


def make_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (tracking and registry on the same store)."""
    from mlflow import MlflowClient  # ~2 s import: only when tracking is used

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _error_code(err: BaseException) -> str:
    return str(getattr(err, "error_code", ""))


def ensure_experiment(client: Any, name: str, *, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {name!r} is deleted in MLflow; restore it or set "
                "tracking.experiment to another name"
            )
        return str(exp.experiment_id)
    uri = Path(artifact_location).as_uri() if artifact_location else None
    return str(client.create_experiment(name, artifact_location=uri))


def ensure_registered_model(client: Any, name: str, *, description: str) -> None:
    """Create registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
            raise


def log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """Log params in batches (MLflow takes at most 100 per call, values ≤ 6000 chars)."""
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    client: Any, run_id: str, metrics: Mapping[str, float], *, step: int, timestamp_ms: int
) -> None:
    """Log metrics in batches (MLflow takes at most 1000 per call)."""
    from mlflow.entities import Metric

    items = [Metric(k, float(v), timestamp_ms, step) for k, v in sorted(metrics.items())]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def list_tag(values: Sequence[str] | Mapping[str, Any], *, what: str) -> str:
    """A JSON tag value, or a pointer to the artifact when it is too long for a tag."""
    text = (
        json.dumps(values, sort_keys=True)
        if isinstance(values, Mapping)
        else json.dumps(list(values))
    )
    if len(text) <= TAG_LIMIT:
        return text
    return f"{len(values)} {what} (see lineage.json in the model's artifacts)"
