"""End to end on stock Flower: ``--stock-flower`` on the nodes and on the run, so not one of
Federator's Flower patches (`client/_flwr_compat`, `server/_flwr_compat`) is used — and the
federation, its versions and its signed releases are the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from deployed import NODES, cli_output, connected_nodes, deployment, fed_config
from procs import run_cli

pytestmark = pytest.mark.integration
__all__ = ["deployment"]  # the fixture, imported for pytest


def test_a_federation_runs_on_stock_flower_end_to_end(deployment: dict[str, Any]) -> None:
    """``--stock-flower`` on the nodes and on the run: Flower's own flower-supernode and
    flower-superexec, Flower's own reply pulls — and the same federation, releases included."""
    d = deployment
    nodes = connected_nodes(d, stock=True)
    for proc in nodes.values():
        assert "every 3 s (stock Flower)" in cli_output(proc), cli_output(proc)[-2000:]
    kit = d["kits"] / "coordinator"
    cfg = fed_config(
        d,
        rounds=2,
        extra=f"""
[training]
epochs = 2
lr = 0.1
momentum = 0.9
[gate]
threshold = 0.3
[release]
signing_key = "{kit / "release.key"}"
""",
    )
    result = run_cli(
        "run",
        str(cfg),
        "--coordinator",
        f"127.0.0.1:{d['port']}",
        "--kit",
        str(kit),
        "--stock-flower",
        cwd=d["tmp"],
        env=d["env"],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "coordinator on stock Flower" in result.stdout, result.stdout[-6000:]
    assert "Federation 'e2e-deploy' finished" in result.stdout, result.stdout[-6000:]
    for name in NODES:
        state = d["kits"] / "nodes" / name / "state"
        # Flower's own SuperNode logs no pull interval; ours always does
        assert "pulling every" not in (state / "supernode.log").read_text()
        assert "warm SuperExec" not in (state / "superexec.log").read_text()
    from mlflow import MlflowClient

    uri = f"sqlite:///{d['tmp'] / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'e2e-deploy'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 2]
    champion = client.get_registered_model("e2e-deploy").aliases["champion"]
    for name in NODES:
        current = d["kits"] / "nodes" / name / "state" / "models" / "current"
        assert current.is_symlink(), f"{name} installed no release"
        assert Path(os.readlink(current)).name == str(champion)
