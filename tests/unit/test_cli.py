"""The `federator` command: plans, errors and exit codes as a person sees them."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeGrid, client_handlers, server_identity
from typer.testing import CliRunner

from federator.server.cli import app
from federator.server.federation.runner import run_federation
from federator.server.plan import build_plan
from federator.server.progress import LogProgress

runner = CliRunner()


def _toml(raw: dict[str, Any]) -> str:
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(
                f"{k} = {v!r}".replace("'", '"')
                if isinstance(v, str)
                else f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
            )
    return "\n".join(lines) + "\n"


@pytest.fixture
def config_file(tmp_path: Path, raw_config: dict[str, Any]) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(_toml(raw_config))
    assert tomllib.loads(path.read_text()) == raw_config
    return path


def test_validate_prints_the_resolved_plan(config_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(config_file), "--rounds", "9"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for part in (
        "Plan for federation 'unit'",
        "digits-mlp",
        "1797 examples",
        "IID over 4",
        "fedavg",
        "McMahan",
        "9 (seed 1)",
        "accuracy ≥ 0.0",
        "sqlite:///",
        "nothing was started",
    ):
        assert part in out, part
    assert not (config_file.parent / "runs").exists()  # validate creates no store


def test_validate_shows_the_privacy_plan(config_file: Path) -> None:
    from federator.privacy import Accountant, noise_multiplier

    path = config_file
    path.write_text(
        path.read_text()
        + "[privacy.local]\ntarget_epsilon = 3.0\ndelta = 1e-4\nmax_grad_norm = 1.0\n"
        + "[privacy.central]\nnoise_multiplier = 1.0\nclipping_norm = 2.0\nside = 'client'\n"
    )
    result = runner.invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    # 288 training examples, batch 32 (defaults): q = 1/9, 9 steps a round, 2 rounds.
    sigma = noise_multiplier(
        3.0, delta=1e-4, sample_rate=1 / 9, steps=18, accountant=Accountant.RDP
    )
    assert f"σ = {sigma:.3f}, sampling rate 0.1111, 9 steps per round" in out
    assert "local DP-SGD: ε ≤ 3.0 at δ = 0.0001 per client over 2 round(s)" in out
    assert "fixed clipping at 2.0 on the client side" in out
    assert "not accounted" in out


def test_validate_bad_override_exits_2_and_names_it(config_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(config_file), "--clients", "0"])
    assert result.exit_code == 2
    assert "data.clients" in result.stderr
    assert "[from --clients 0]" in result.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_validate_malformed_set(config_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(config_file), "--set", "rounds"])
    assert result.exit_code == 2
    assert "expected key.path=value" in result.stderr


def test_data_that_does_not_fit_the_task_exits_1(config_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(config_file), "--set", "data.dataset=mnist"])
    assert result.exit_code == 1
    assert (
        "expects examples of shape (64,), but dataset 'mnist' has (1, 28, 28)"
        in result.stderr.replace("\n", " ")
    )


def test_simulate_refuses_a_bad_config_before_starting_anything(config_file: Path) -> None:
    result = runner.invoke(app, ["simulate", str(config_file), "--set", "strategy.name=nope"])
    assert result.exit_code == 2
    assert "unknown strategy 'nope'" in result.stderr
    assert not (config_file.parent / "runs").exists()


def test_models_list_without_a_store(config_file: Path) -> None:
    result = runner.invoke(app, ["models", "list", str(config_file)])
    assert result.exit_code == 1
    assert "no MLflow store at" in result.stderr


@pytest.fixture
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.mark.usefixtures("_identity")
def test_models_list_shows_versions_and_decisions(
    config_file: Path, raw_config: dict[str, Any]
) -> None:
    raw = copy.deepcopy(raw_config)
    raw["gate"] = {"threshold": 0.99}  # nothing passes: every version is "rejected"
    run_federation(
        FakeGrid(client_handlers(4)),
        build_plan(raw, source="x"),
        display=LogProgress(lambda _: None),
    )
    result = runner.invoke(app, ["models", "list", str(config_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("rejected") >= 2
    assert "challenger" in result.stdout
    assert "misses" in result.stdout


def test_strategies_lists_papers() -> None:
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    assert "fedtrimmedavg" in result.stdout
    assert "Blanchard" in result.stdout


def test_bundled_config_by_path_does_not_shadow_installed_packages() -> None:
    """`simulations/` holds `datasets.py`; putting it on the import path would hide Hugging
    Face's `datasets` (which the partitioners need) — as `make demo` once did."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cli = Path(sys.executable).parent / "federator"
    result = subprocess.run(
        [str(cli), "validate", "simulations/demo.toml"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "valid" in result.stdout


def test_log_progress_reports_pending_writes_only_when_they_change() -> None:
    lines: list[str] = []
    progress = LogProgress(lines.append)
    for pending in (4, 4, 4, 2, 2, 0):
        progress.saving(pending)
    assert lines == [
        "saving to MLflow: 4 write(s) left",
        "saving to MLflow: 2 write(s) left",
        "saving to MLflow: 0 write(s) left",
    ]
