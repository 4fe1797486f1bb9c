"""Round checkpoints: everything needed to continue a federation after its last full round.

A checkpoint holds the global model, the strategy's own state (e.g. FedAdam's moments), the
gate's champion, the count of consecutive skipped rounds, the lineage of registered versions,
a compact record of every round so far, and the round's metrics. It is written after every
round as artifacts of the federation's MLflow run (``checkpoints/round-NNNN/``); the run tag
``federator.checkpoint_round`` is set only once the upload is complete, so it always names a
whole checkpoint. Arrays are stored as safetensors, the rest as JSON — nothing is pickled.

Per-round seeds are derived from (seed, round, node label), so no RNG state needs saving: a
resumed federation draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from safetensors.numpy import load_file, save_file

from federator import FederatorError
from federator.client.weights import load_safetensors, save_safetensors

CHECKPOINT_TAG = "federator.checkpoint_round"


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """The state after round ``round`` (lineage is filled in by the tracking worker)."""

    round: int
    arrays: ArrayRecord = field(repr=False)
    strategy_state: Mapping[str, np.ndarray] = field(repr=False)
    gate: Mapping[str, float | int | None]
    consecutive_skips: int
    rounds: list[dict[str, Any]]
    metrics: Mapping[str, float]
    lineage: Mapping[str, Any] = field(default_factory=dict)
    # The central DP accountant's state (Flower's `RdpAccountant.state_dict`), if any.
    privacy: Mapping[str, Any] = field(default_factory=dict)


def strategy_state(strategy: Strategy, attrs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named dict-of-array attributes of a Flower strategy, flattened as ``attr/key``."""
    out: dict[str, np.ndarray] = {}
    for attr in attrs:
        for key, value in (getattr(strategy, attr, None) or {}).items():
            out[f"{attr}/{key}"] = np.ascontiguousarray(value)
    return out


def load_strategy_state(
    strategy: Strategy, attrs: tuple[str, ...], state: Mapping[str, np.ndarray]
) -> None:
    """Put saved ``attr/key`` arrays back on the strategy (attributes not saved stay unset)."""
    for attr in attrs:
        values = {
            k.split("/", 1)[1]: np.array(v) for k, v in state.items() if k.split("/", 1)[0] == attr
        }
        setattr(strategy, attr, values or None)


def write_checkpoint(cp: Checkpoint, folder: Path) -> Path:
    """Write ``cp`` into ``folder`` (created)."""
    folder.mkdir(parents=True)
    save_safetensors(cp.arrays, folder / "global.safetensors")
    if cp.strategy_state:
        save_file(dict(cp.strategy_state), str(folder / "strategy.safetensors"))
    state = {
        "round": cp.round,
        "gate": dict(cp.gate),
        "consecutive_skips": cp.consecutive_skips,
        "rounds": cp.rounds,
        "metrics": dict(cp.metrics),
        "lineage": dict(cp.lineage),
        "privacy": dict(cp.privacy),
    }
    (folder / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    return folder


def read_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint written by `write_checkpoint`; `FederatorError` if it is incomplete."""
    try:
        state = json.loads((folder / "state.json").read_text())
        arrays = load_safetensors(folder / "global.safetensors")
    except (OSError, ValueError, FederatorError) as err:
        raise FederatorError(f"checkpoint in {folder} is unreadable: {err}") from None
    strategy_file = folder / "strategy.safetensors"
    strategy = dict(load_file(str(strategy_file))) if strategy_file.is_file() else {}
    return Checkpoint(
        round=int(state["round"]),
        arrays=arrays,
        strategy_state=strategy,
        gate=state["gate"],
        consecutive_skips=int(state["consecutive_skips"]),
        rounds=list(state["rounds"]),
        metrics=state["metrics"],
        lineage=state["lineage"],
        privacy=state.get("privacy", {}),
    )
