"""Shared fixtures: a minimal valid config, and an environment that never phones home."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

REPO = Path(__file__).resolve().parent.parent

MINIMAL: dict[str, Any] = {
    "federation": {"name": "unit", "rounds": 2, "seed": 1},
    "task": {"name": "digits-mlp"},
    "data": {"clients": 4},
}


@pytest.fixture
def raw_config(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config whose MLflow store lives in the test's tmp folder."""
    raw = copy.deepcopy(MINIMAL)
    raw["tracking"] = {"runs_dir": str(tmp_path / "runs")}
    return raw
