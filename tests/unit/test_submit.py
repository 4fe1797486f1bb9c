"""`federator run`: what is sent to the coordinator, and how its ServerApp reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from federator import ConfigError
from federator.server.deploy.submit import (
    RESUME_KEY,
    SUBMITTED_KEY,
    decode_config,
    encode_config,
    submitted_config,
)
from federator.server.federation.app import _plan_from, _resume_from
from federator.server.plan.overrides import parse_override

CONFIG = """
[federation]
name = "sub"
rounds = 2
seed = 1
[task]
name = "digits-mlp"
[data]
clients = 3
[tracking]
runs_dir = "relative-runs"
"""


def _context(run_config: dict[str, str]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_the_sent_config_keeps_user_values_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fed.toml"
    path.write_text(CONFIG)
    plan, raw = submitted_config(path, overrides=[parse_override("federation.rounds=4")])
    assert plan.rounds == 4
    assert raw["federation"]["rounds"] == 4
    assert raw["tracking"]["runs_dir"] == str(tmp_path / "relative-runs")
    assert "strategy" not in raw  # defaults are the coordinator's to fill in
    assert decode_config(encode_config(raw)) == raw


def test_the_serverapp_builds_the_submitted_plan(tmp_path: Path) -> None:
    path = tmp_path / "fed.toml"
    path.write_text(CONFIG)
    _, raw = submitted_config(path)
    context = _context({SUBMITTED_KEY: encode_config(raw), RESUME_KEY: "abc123"})
    plan = _plan_from(context)
    assert plan.name == "sub"
    assert plan.data.clients == 3
    assert _resume_from(context) == "abc123"
    assert _resume_from(_context({RESUME_KEY: ""})) is None


def test_a_bad_config_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "fed.toml"
    path.write_text(CONFIG.replace("clients = 3", "clients = 0"))
    with pytest.raises(ConfigError, match="data.clients"):
        submitted_config(path)
