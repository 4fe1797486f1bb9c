"""A kept release, loaded for serving: the model and what its signed statement says."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from federator import PredictionFailed, ReleaseRefused
from federator.client.store import ModelStore, StoredVersion


@dataclass(frozen=True)
class Prediction:
    """Class labels and their probabilities, one row per input row."""

    labels: list[int]
    probabilities: list[list[float]]


@dataclass(frozen=True)
class ServedModel:
    """One verified version of the store, ready to predict."""

    info: StoredVersion
    input_shape: tuple[int, ...]
    module: torch.nn.Module = field(repr=False, compare=False)

    @property
    def version(self) -> int:
        return self.info.version

    def predict(self, batch: npt.NDArray[np.float32]) -> Prediction:
        """Predictions for ``batch`` (shape ``(n, *input_shape)``, already validated);
        `PredictionFailed` if the model's outputs are not finite — a version with diverged
        weights loads and runs, but what it says is no prediction."""
        with torch.inference_mode():
            probs = torch.softmax(self.module(torch.from_numpy(batch)), dim=1)
            if not bool(torch.isfinite(probs).all()):
                raise PredictionFailed(f"version {self.version} gave outputs that are not finite")
        return Prediction(labels=probs.argmax(dim=1).tolist(), probabilities=probs.tolist())


def load_served(store: ModelStore, version: int | None = None) -> ServedModel:
    """Version ``version`` of ``store`` (default: the current one), verified against its
    signed statement and loaded from safetensors — never unpickled. `ReleaseRefused` if
    nothing is installed or the files no longer match what was signed; whatever the task's
    code raises while building the model propagates (the holder keeps its old model)."""
    chosen = store.current_version() if version is None else version
    if chosen is None:
        raise ReleaseRefused(f"no model is installed in {store.root}")
    task = store.task(chosen)
    module = store.load_model(task, version=chosen)
    return ServedModel(
        info=store.describe(chosen), input_shape=tuple(task.input_shape), module=module
    )


__all__ = ["Prediction", "ServedModel", "load_served"]
