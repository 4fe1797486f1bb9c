"""A deployed node: its own data from disk and its policy file, checked before training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import instruction, server_identity
from flwr.app import Context, Message, RecordDict

from federator import ConfigError
from federator.client import app as client
from federator.client.mods import refusing
from federator.client.node_policy import parse_policy
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import FederationPlan, build_plan


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.fixture
def plan(raw_config: dict[str, Any]) -> FederationPlan:
    return build_plan(raw_config, source="test")


@pytest.fixture
def site_data(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "site.npz"
    np.savez(path, x=(digits.data[:120] / 16.0).astype(np.float32), y=digits.target[:120])
    return path


def _train(plan: FederationPlan, node_config: dict[str, Any]) -> Message:
    cfg = instructions_for(plan).to_config()
    cfg["server-round"] = 1
    msg = instruction(
        RecordDict({"arrays": initial_arrays(plan.task(), 0), "config": cfg}), node_id=5
    )
    ctx = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    return refusing(msg, ctx, client.train)


def test_a_deployed_node_trains_on_its_own_file(plan: FederationPlan, site_data: Path) -> None:
    reply = _train(plan, {"name": "site-a", "data": str(site_data)})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    val = round(120 * plan.data.client_val_fraction)
    assert reply.content["metrics"]["num-examples"] == 120 - val
    assert reply.content["federator"]["label"] == "site-a"


def test_data_of_the_wrong_shape_is_refused(plan: FederationPlan, tmp_path: Path) -> None:
    path = tmp_path / "wrong.npz"
    np.savez(path, x=np.zeros((10, 28, 28), np.float32), y=np.zeros(10, np.int64))
    reply = _train(plan, {"name": "site-a", "data": str(path)})
    assert reply.has_error()
    assert "have shape (28, 28), but the task expects (64,)" in reply.error.reason


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ('allowed_strategies = ["fedprox"]', "strategy 'fedavg' is not among the allowed"),
        ('allowed_tasks = ["mnist-cnn"]', "task 'digits-mlp' is not among the allowed"),
        ('allowed_federations = ["other"]', "federation 'unit' is not among the allowed"),
        ("require_secagg = true", "requires secure aggregation"),
        ("max_epsilon = 4.0", "only trains with local DP"),
    ],
)
def test_the_policy_file_refuses_runs_it_does_not_allow(
    plan: FederationPlan, site_data: Path, tmp_path: Path, policy: str, reason: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(policy + "\n")
    reply = _train(plan, {"name": "site-a", "data": str(site_data), "policy": str(path)})
    assert reply.has_error()
    assert reply.error.reason.startswith("PolicyRefused: the node's policy refuses this run")
    assert reason in reply.error.reason


def test_a_policy_that_allows_the_run(
    plan: FederationPlan, site_data: Path, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('allowed_strategies = ["fedavg"]\nallowed_tasks = ["digits-mlp"]\n')
    reply = _train(plan, {"name": "site-a", "data": str(site_data), "policy": str(path)})
    assert not reply.has_error()


def test_an_unreadable_policy_stops_training(plan: FederationPlan, site_data: Path) -> None:
    reply = _train(plan, {"name": "a", "data": str(site_data), "policy": "/nonexistent.toml"})
    assert reply.has_error()
    assert "ConfigError: node policy /nonexistent.toml: cannot read" in reply.error.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_epsilon = -1", "max_epsilon: Input should be greater than 0"),
        ("privacy_delta = 2", "privacy_delta"),
        ("colour = 'red'", "colour: Extra inputs are not permitted"),
        ("max_epsilon = ", "not valid TOML"),
    ],
)
def test_bad_policy_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text, source="policy.toml")
