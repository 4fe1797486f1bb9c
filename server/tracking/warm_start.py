"""A federation that starts from a registered version (``[federation] warm_start``).

Retraining after drift should not throw the champion away: the new federation's round-0
model is the named version's weights (its ``weights.safetensors``, read without pickle), and
its first version's lineage parent is that version, so the registry shows the new models as
the champion's descendants. The weights must fit the task's model, key by key and shape by
shape; anything else is a `ConfigError` naming the version before round 1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from federator import ConfigError
from federator.client.weights import load_safetensors
from federator.strategies.screening import array_specs


def resolve_version(client: Any, model: str, ref: str) -> Any:
    """The registered version ``ref`` names: an alias (``champion``) or a number."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.isdigit():
            return client.get_model_version(model, ref)
        return client.get_model_version_by_alias(model, ref)
    except MlflowException as err:
        raise ConfigError(
            f"federation.warm_start = {ref!r}: no such version of {model!r} ({err.message})"
        ) from None


def warm_start_arrays(
    client: Any, model: str, ref: str, *, like: ArrayRecord
) -> tuple[str, ArrayRecord]:
    """The version ``ref`` of ``model`` and its weights, checked against ``like`` (the task's
    freshly built model)."""
    version = resolve_version(client, model, ref)
    artifact = f"models/round-{int(version.tags['federator.round']):04d}/weights.safetensors"
    with tempfile.TemporaryDirectory(prefix="federator-warm-") as tmp:
        path = Path(client.download_artifacts(version.run_id, artifact, tmp))
        arrays = load_safetensors(path)
    expected, got = array_specs(like), array_specs(arrays)
    if got != expected:
        raise ConfigError(
            f"federation.warm_start: version {version.version} of {model!r} does not fit "
            f"this task's model (arrays {sorted(got)} vs {sorted(expected)}, or their shapes)"
        )
    return str(version.version), arrays


__all__ = ["resolve_version", "warm_start_arrays"]
