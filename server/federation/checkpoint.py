"""Round checkpoints: every stateful part's own ``state_dict``, assembled in one place.

Each part of a federation that carries state from one round to the next owns a
``state_dict()`` / ``load_state_dict()`` pair: the round loop (its place, the consecutive
skips and the global model), the gate (its champion), the strategy (its own state, e.g.
FedAdam's moments), the central DP accountant and, on the tracking side, the lineage of the
registered versions and the record of every round. Each registers once, under its `Component`
name, with the federation's `Checkpointer` — the one place that assembles them into a
`Checkpoint` (``{component: state}``) and the one place that puts them back on resume.
Tracking only persists what it is handed (`write_checkpoint`, `read_checkpoint`).

A part's state is taken at one of two moments (`Taken`): the round loop's parts as their round
ends (the next round changes them at once), the tracking writer's parts just before the
checkpoint is written (they change only when the round's version is registered).

On disk, ``checkpoints/round-NNNN/`` in the federation's MLflow run holds ``checkpoint.json``
(the format version, the round, each component's state with every array replaced by a
reference) and ``arrays.safetensors`` (those arrays). Nothing is pickled. The run tag
``federator.checkpoint_round`` is set only once the upload is complete, so it always names a
whole checkpoint.

Per-round seeds are derived from (seed, round, node label), so no RNG state needs saving: a
resumed federation draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from federator import CheckpointError
from federator.strategies import Registry

CHECKPOINT_TAG = "federator.checkpoint_round"
# Format 1 (``state.json`` + ``global.safetensors``, fixed fields) is no longer read.
FORMAT_VERSION = 2
STATE_FILE = "checkpoint.json"
ARRAYS_FILE = "arrays.safetensors"
_ARRAY_REF = "$array"

# A part's state: strings to JSON values, numpy arrays, or nested states and lists of them.
State = Mapping[str, Any]


class Component(StrEnum):
    """The parts a checkpoint holds, by name."""

    LOOP = "loop"  # the round loop: last round run, consecutive skips, the global model
    GATE = "gate"  # the champion
    STRATEGY = "strategy"  # the Flower strategy's own state (e.g. FedAdam's moments)
    PRIVACY = "privacy"  # the central DP accountant
    LINEAGE = "lineage"  # the versions registered so far (tracking)
    RECORDS = "records"  # every round's record, the last round's metrics (tracking)


class Taken(StrEnum):
    """When a part's state is taken for a round's checkpoint."""

    AT_ROUND_END = "round-end"  # in the round loop, as the round ends
    AT_COMMIT = "commit"  # on the tracking writer, after the round's version is registered


class Stateful(Protocol):
    """A part that owns its state."""

    def state_dict(self) -> State: ...

    def load_state_dict(self, state: State) -> None: ...


def checkpoint_path(round_: int) -> str:
    """Where round ``round_``'s checkpoint lives in the run's artifacts."""
    return f"checkpoints/round-{round_:04d}"


@dataclass(frozen=True)
class Checkpoint:
    """The state of every registered part after round ``round``, by component name."""

    round: int
    states: Mapping[str, State] = field(repr=False)

    def __getitem__(self, component: Component) -> State:
        try:
            return self.states[component]
        except KeyError:
            raise CheckpointError(
                f"the checkpoint of round {self.round} holds no {component.value!r} state"
            ) from None


@dataclass(frozen=True)
class _Part:
    part: Stateful
    taken: Taken


class Checkpointer:
    """Assembles checkpoints from the registered parts, and restores the parts from one."""

    def __init__(self) -> None:
        self._parts: Registry[_Part] = Registry("checkpoint component")

    def register(
        self, name: Component, part: Stateful, *, taken: Taken = Taken.AT_ROUND_END
    ) -> None:
        """Add ``part`` under ``name``; `RegistryError` if the name is taken."""
        self._parts.register(name.value, _Part(part, taken))

    def _states(self, taken: Taken) -> dict[str, State]:
        entries = ((name, self._parts.get(name)) for name in self._parts)
        return {name: e.part.state_dict() for name, e in entries if e.taken is taken}

    def snapshot(self, round_: int) -> Checkpoint:
        """The round loop's parts as round ``round_`` ends (call from the round loop)."""
        return Checkpoint(round=round_, states=self._states(Taken.AT_ROUND_END))

    def complete(self, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint`` with the tracking writer's parts added (call from the writer,
        once the round's version is registered, just before the checkpoint is written)."""
        return Checkpoint(
            round=checkpoint.round, states={**checkpoint.states, **self._states(Taken.AT_COMMIT)}
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load every registered part from ``checkpoint``; `CheckpointError` if it lacks a
        registered part, holds one nobody registered, or a part refuses its state."""
        names, held = set(self._parts.names()), set(checkpoint.states)
        problems = [
            *(f"no {n!r} state" for n in sorted(names - held)),
            *(f"a {n!r} state this federation has no part for" for n in sorted(held - names)),
        ]
        if problems:
            raise CheckpointError(
                f"the checkpoint of round {checkpoint.round} does not fit this federation: "
                + "; ".join(problems)
            )
        for name in sorted(names):
            try:
                self._parts.get(name).part.load_state_dict(checkpoint.states[name])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(
                    f"the {name!r} state in the checkpoint of round {checkpoint.round} "
                    f"does not load: {err!r}"
                ) from err


def _split(tree: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """``tree`` as JSON, its arrays moved to ``arrays`` (named by their path) and referenced."""
    if isinstance(tree, np.ndarray):
        if path in arrays:
            raise CheckpointError(f"two arrays in a checkpoint share the name {path!r}")
        arrays[path] = np.require(tree, requirements=["C"])  # keeps 0-d arrays 0-d
        return {_ARRAY_REF: path}
    if isinstance(tree, Mapping):
        if not all(isinstance(k, str) for k in tree):
            raise CheckpointError(f"a checkpoint state's keys must be strings (at {path!r})")
        return {k: _split(v, f"{path}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_split(v, f"{path}/{i}", arrays) for i, v in enumerate(tree)]
    return tree


def _join(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The inverse of `_split`."""
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY_REF}:
            return arrays[tree[_ARRAY_REF]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


def write_checkpoint(cp: Checkpoint, folder: Path) -> Path:
    """Write ``cp`` into ``folder`` (created): JSON plus one safetensors file."""
    arrays: dict[str, np.ndarray] = {}
    components = {name: _split(state, name, arrays) for name, state in cp.states.items()}
    folder.mkdir(parents=True)
    save_file(arrays, str(folder / ARRAYS_FILE))
    doc = {"format": FORMAT_VERSION, "round": cp.round, "components": components}
    (folder / STATE_FILE).write_text(json.dumps(doc, indent=1))
    return folder


def read_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint `write_checkpoint` wrote into ``folder``; `CheckpointError` if it is
    incomplete, unreadable or in another format."""
    if not (folder / STATE_FILE).is_file():
        if (folder / "state.json").is_file():
            raise CheckpointError(
                f"the checkpoint in {folder} is in format 1 (state.json), written by an "
                f"older Federator; this one reads format {FORMAT_VERSION}: continue that run "
                "with the Federator version that started it, or start a new run"
            )
        raise CheckpointError(f"the checkpoint in {folder} is incomplete: no {STATE_FILE}")
    unreadable = f"the checkpoint in {folder} is unreadable"
    try:
        doc = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{unreadable}: {err!r}") from None
    version = doc.get("format") if isinstance(doc, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"the checkpoint in {folder} is in format {version!r}; this Federator reads "
            f"format {FORMAT_VERSION}"
        )
    try:
        arrays = load_file(str(folder / ARRAYS_FILE))
        states = {name: _join(tree, arrays) for name, tree in doc["components"].items()}
        return Checkpoint(round=int(doc["round"]), states=states)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as err:
        raise CheckpointError(f"{unreadable}: {err!r}") from None
