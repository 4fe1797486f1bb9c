"""The instructions on the wire: one declaration per concept, validated at the node's edge.

The data split and local DP travel as the plan's own `SimulationData` and `LocalDpTarget`;
their constraints (declared once, shared with the config file's schema) are checked again when
a node reads a message, so a bad or tampered instruction is refused with a reason.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flwr.app import ConfigRecord

from federator import UpdateRejected
from federator.client.instructions import read_instructions
from federator.client.wire import INSTRUCTIONS_KEY
from federator.server.federation.instructions import instructions_for
from federator.server.plan import build_plan

RAW: dict[str, Any] = {
    "federation": {"name": "wire", "rounds": 3, "seed": 5},
    "task": {"name": "digits-mlp"},
    "data": {"clients": 4, "partitioner": "dirichlet", "alpha": 0.3},
    "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8},
    "privacy": {"local": {"target_epsilon": 8.0, "delta": 1e-5}},
}


def _sent() -> dict[str, Any]:
    plan = build_plan(RAW, source="test")
    return json.loads(str(instructions_for(plan, run_id="r1").to_config()[INSTRUCTIONS_KEY]))


def _read(doc: dict[str, Any]) -> Any:
    return read_instructions(ConfigRecord({INSTRUCTIONS_KEY: json.dumps(doc)}))


def test_the_plan_travels_unchanged() -> None:
    plan = build_plan(RAW, source="test")
    got = _read(_sent())
    assert got.data == plan.data  # the same frozen SimulationData, not a copy of its fields
    assert got.local_dp == plan.privacy.local
    assert got.data.seed == 5
    settings = got.settings(round_seed=42, proximal_mu=0.0)
    assert (settings.lr, settings.momentum, settings.batch_size, settings.seed) == (
        0.1,
        0.9,
        8,
        42,
    )


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("data", "alpha"), -1.0, "alpha"),
        (("data", "clients"), 0, "clients"),
        (("data", "server_holdout"), 1.5, "server_holdout"),
        (("data", "surprise"), 1, "surprise"),
        (("local_dp", "delta"), 2.0, "delta"),
        (("local_dp", "target_epsilon"), 0.0, "target_epsilon"),
        (("local_dp", "rounds"), 0, "rounds"),
        (("local_dp", "extra"), "x", "extra"),
    ],
)
def test_a_bad_instruction_is_refused_with_the_field(
    path: tuple[str, str], value: object, says: str
) -> None:
    doc = _sent()
    doc[path[0]][path[1]] = value
    with pytest.raises(UpdateRejected, match=says):
        _read(doc)
