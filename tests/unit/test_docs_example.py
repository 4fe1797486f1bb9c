"""The task example in docs/tasks.md is real code that runs, and the page shows it verbatim."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeGrid, client_handlers, server_identity
from typer.testing import CliRunner

from federator.server.cli import app
from federator.server.federation.runner import run_federation
from federator.server.plan import load_plan
from federator.server.plan.overrides import parse_override
from federator.server.progress import LogProgress

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = DOCS / "examples"


@pytest.fixture
def examples_on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        with server_identity():
            yield
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop("wine_task", None)


def _blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_tasks_page_shows_the_example_files_verbatim() -> None:
    assert (EXAMPLES / "wine_task.py").read_text() in _blocks("tasks.md", "python")
    config = (EXAMPLES / "wine.toml").read_text()
    body = config.split("\n", 2)[2]  # the page leaves out the file's leading comment
    assert body in _blocks("tasks.md", "toml")


def test_validate_finds_the_task_next_to_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI adds the config's folder
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.delitem(sys.modules, "wine_task", raising=False)
    result = CliRunner().invoke(app, ["validate", str(EXAMPLES / "wine.toml")])
    assert result.exit_code == 0, result.output
    assert "wine_task:task" in result.stdout
    assert "178 examples" in result.stdout


@pytest.mark.usefixtures("examples_on_path")
def test_the_wine_federation_learns(tmp_path: Path) -> None:
    plan = load_plan(
        EXAMPLES / "wine.toml", overrides=[parse_override(f'tracking.runs_dir="{tmp_path}"')]
    )
    summary = run_federation(
        FakeGrid(client_handlers(3)), plan, display=LogProgress(lambda _: None)
    )
    assert summary.champion_version is not None
    best = summary.best()
    assert best is not None
    assert best.server_eval is not None
    assert best.server_eval.accuracy > 0.9
