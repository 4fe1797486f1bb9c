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
    run_config_entries,
    submitted_config,
    write_run_config,
)
from federator.server.federation.app import _compat_from, _plan_from, _resume_from
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


@pytest.mark.parametrize(("resume", "stock"), [(None, False), ("abc123", True)])
def test_the_run_config_is_one_flower_accepts_for_our_app(
    tmp_path: Path, resume: str | None, stock: bool
) -> None:
    """Parsed and fused as the SuperLink does (flwr's own functions, the App's own declared
    config): an undeclared key would be refused as an invalid run configuration."""
    from flwr.common.config import flatten_dict, fuse_dicts, get_project_config, parse_config_args

    from federator.server.deploy.submit import APP_DIR

    path = tmp_path / "fed.toml"
    path.write_text(CONFIG)
    _, raw = submitted_config(path)
    entries = run_config_entries(raw, resume=resume, stock_flower=stock)
    text = str(write_run_config(entries, tmp_path / "run-config.toml"))
    declared = flatten_dict(get_project_config(APP_DIR)["tool"]["flwr"]["app"]["config"])
    fused = fuse_dicts(declared, parse_config_args([text]))
    context = _context(fused)  # type: ignore[arg-type]
    assert _plan_from(context).name == "sub"
    assert _resume_from(context) == resume
    assert _compat_from(context).stock is stock
    with pytest.raises(ValueError, match="not present"):
        fuse_dicts(declared, parse_config_args(["undeclared-key=true"]))
