"""The checkpointer: parts registered once by name, their state dicts to files and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federator import CheckpointError, RegistryError
from federator.server.federation.checkpoint import (
    ARRAYS_FILE,
    STATE_FILE,
    Checkpoint,
    Checkpointer,
    Component,
    Taken,
    read_checkpoint,
    write_checkpoint,
)


class _Part:
    """A part whose state is whatever it was given."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = state or {}
        self.loaded: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.loaded.append(state)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality that compares arrays by dtype, shape and value."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


STATES: dict[Component, dict[str, Any]] = {
    Component.LOOP: {
        "round": 3,
        "consecutive_skips": 1,
        "arrays": {
            "fc2.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "fc1.bias": np.array([1, -2], dtype=np.int64),
            "scalar": np.array(2.5),
        },
    },
    Component.GATE: {"champion_round": 2, "champion_value": 0.875},
    Component.STRATEGY: {"m_t": {"w": np.ones((2, 2))}, "v_t": {"w": np.zeros(3, np.float16)}},
    Component.PRIVACY: {},
    Component.LINEAGE: {"champion": "2", "champion_round": 2, "versions": {"1": "1"}},
    Component.RECORDS: {
        "rounds": [{"round": 1, "val": None, "gate": {"reasons": ["a", "b"]}}],
        "metrics": {"val/accuracy": 0.5},
    },
}
AT_COMMIT = {Component.LINEAGE, Component.RECORDS}


def _checkpointer(states: dict[Component, dict[str, Any]]) -> tuple[Checkpointer, dict[str, _Part]]:
    checkpointer, parts = Checkpointer(), {}
    for name, state in states.items():
        parts[name.value] = _Part(state)
        taken = Taken.AT_COMMIT if name in AT_COMMIT else Taken.AT_ROUND_END
        checkpointer.register(name, parts[name.value], taken=taken)
    return checkpointer, parts


def test_state_dicts_in_files_and_back_out_equal(tmp_path: Path) -> None:
    saving, _ = _checkpointer(STATES)
    at_round_end = saving.snapshot(3)
    assert set(at_round_end.states) == {c.value for c in STATES if c not in AT_COMMIT}
    cp = saving.complete(at_round_end)
    folder = write_checkpoint(cp, tmp_path / "cp")
    assert sorted(p.name for p in folder.iterdir()) == sorted([STATE_FILE, ARRAYS_FILE])
    doc = json.loads((folder / STATE_FILE).read_text())
    assert doc["format"] == 2
    # Arrays live in the safetensors file; the JSON names them.
    assert doc["components"]["loop"]["arrays"]["fc2.weight"] == {"$array": "loop/arrays/fc2.weight"}

    restoring, parts = _checkpointer({name: {} for name in STATES})
    back = read_checkpoint(folder)
    assert back.round == 3
    restoring.restore(back)
    for name, state in STATES.items():
        (loaded,) = parts[name.value].loaded
        assert _equal(loaded, state), name


def test_a_component_name_is_registered_once() -> None:
    checkpointer = Checkpointer()
    checkpointer.register(Component.GATE, _Part())
    with pytest.raises(RegistryError, match="'gate' is already registered"):
        checkpointer.register(Component.GATE, _Part(), taken=Taken.AT_COMMIT)


def test_a_checkpoint_missing_a_registered_part_is_refused_whole() -> None:
    checkpointer, parts = _checkpointer(
        {Component.LOOP: {}, Component.GATE: {}, Component.PRIVACY: {}}
    )
    cp = Checkpoint(round=4, states={"loop": {}, "strategy": {}})
    with pytest.raises(CheckpointError, match="round 4") as info:
        checkpointer.restore(cp)
    message = str(info.value)
    assert "no 'gate' state" in message
    assert "no 'privacy' state" in message
    assert "'strategy' state this federation has no part for" in message
    assert all(not p.loaded for p in parts.values())  # nothing was half restored
    with pytest.raises(CheckpointError, match="holds no 'gate' state"):
        cp[Component.GATE]


def test_a_part_that_refuses_its_state_is_named() -> None:
    class Strict(_Part):
        def load_state_dict(self, state: Any) -> None:
            raise KeyError("champion_round")

    checkpointer = Checkpointer()
    checkpointer.register(Component.GATE, Strict())
    with pytest.raises(CheckpointError, match="'gate' state .* round 2 does not load"):
        checkpointer.restore(Checkpoint(round=2, states={"gate": {}}))


def test_a_format_1_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    old = tmp_path / "round-0002"
    old.mkdir()
    (old / "state.json").write_text(json.dumps({"round": 2, "gate": {}, "lineage": {}}))
    (old / "global.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"format 1 \(state\.json\).*reads format 2"):
        read_checkpoint(old)


def test_an_unknown_format_or_an_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = write_checkpoint(Checkpoint(round=1, states={"gate": {}}), tmp_path / "cp")
    doc = json.loads((folder / STATE_FILE).read_text())
    (folder / STATE_FILE).write_text(json.dumps({**doc, "format": 3}))
    with pytest.raises(CheckpointError, match="format 3; this Federator reads format 2"):
        read_checkpoint(folder)
    (folder / STATE_FILE).write_text(json.dumps(doc))
    (folder / ARRAYS_FILE).unlink()
    with pytest.raises(CheckpointError, match="is unreadable"):
        read_checkpoint(folder)
    with pytest.raises(CheckpointError, match="incomplete: no checkpoint.json"):
        read_checkpoint(tmp_path)


def test_state_keys_must_be_strings(tmp_path: Path) -> None:
    cp = Checkpoint(round=1, states={"lineage": {"versions": {1: "1"}}})
    with pytest.raises(CheckpointError, match="keys must be strings"):
        write_checkpoint(cp, tmp_path / "cp")
