"""Model weights as arrays: Flower ArrayRecords, torch state dicts and safetensors files.

Weights cross trust boundaries (client ↔ server ↔ MLflow) only as named numeric arrays —
never pickles. Loading into a model is strict: every key, shape and dtype must match, and
every value must be finite, or nothing is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from safetensors.numpy import load_file, save_file

from federator import UpdateRejected
from federator.strategies.screening import ArraySpec, check_arrays


def model_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (keys are state-dict names)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def model_specs(model: torch.nn.Module) -> dict[str, ArraySpec]:
    """Shapes and (numpy) dtypes every incoming weight set must match."""
    return {
        k: ArraySpec(tuple(v.shape), str(v.detach().cpu().numpy().dtype))
        for k, v in model.state_dict().items()
    }


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Load ``arrays`` into ``model`` after checking them; `UpdateRejected` if they differ."""
    check_arrays(arrays, model_specs(model))
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Name → numpy array."""
    return {k: v.numpy() for k, v in arrays.items()}


def save_safetensors(arrays: ArrayRecord, path: Path) -> None:
    """Write ``arrays`` as a safetensors file."""
    save_file({k: np.ascontiguousarray(v) for k, v in arrays_to_numpy(arrays).items()}, str(path))


def load_safetensors(path: Path) -> ArrayRecord:
    """Read a safetensors file into an ArrayRecord (no code is executed)."""
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError) as err:
        raise UpdateRejected(f"{path}: not a readable safetensors file ({err})") from None
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in sorted(tensors.items())})
