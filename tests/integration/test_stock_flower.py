"""End to end on stock Flower: ``--stock-flower`` on the nodes and on the run, so not one of
Federator's Flower patches (`client/_flwr_compat`, `server/_flwr_compat`) is used — and the
federation, its versions and its signed releases are the same."""

from __future__ import annotations

from typing import Any

import pytest
from deployed import (
    NODES,
    champion_on_every_node,
    cli_output,
    connected_nodes,
    deployment,
    released_run,
)

pytestmark = pytest.mark.integration
__all__ = ["deployment"]  # the fixture, imported for pytest


def test_a_federation_runs_on_stock_flower_end_to_end(deployment: dict[str, Any]) -> None:
    """``--stock-flower`` on the nodes and on the run: Flower's own flower-supernode and
    flower-superexec, Flower's own reply pulls — and the same federation, releases included."""
    d = deployment
    nodes = connected_nodes(d, stock=True)
    for proc in nodes.values():
        assert "every 3 s (stock Flower)" in cli_output(proc), cli_output(proc)[-2000:]
    result = released_run(d, "--stock-flower")
    assert "coordinator on stock Flower" in result.stdout, result.stdout[-6000:]
    for name in NODES:
        state = d["kits"] / "nodes" / name / "state"
        supernode, superexec = ((state / f).read_text() for f in ("supernode.log", "superexec.log"))
        # Flower's own commands announce themselves; ours log their pull interval / fork server
        assert "Starting Flower SuperNode" in supernode, supernode[-2000:]
        assert "pulling every" not in supernode
        assert "Starting Flower SuperExec" in superexec, superexec[-2000:]
        assert "warm SuperExec" not in superexec
    champion_on_every_node(d)
