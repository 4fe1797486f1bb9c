"""Deployment profiles fill in sampling and timeouts; explicit settings win."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fakes import FakeGrid, instruction, server_identity
from flwr.app import RecordDict

from federator import ConfigError
from federator.server.federation.exchange import EXPIRY_MARGIN, Exchange
from federator.server.plan import build_plan


def _plan(raw: dict[str, Any], **strategy: Any) -> Any:
    raw = copy.deepcopy(raw)
    raw["data"]["clients"] = 10
    raw["deployment"] = {"profile": raw.pop("_profile")}
    raw["strategy"] = strategy
    return build_plan(raw, source="test")


def test_cross_silo_waits_for_every_node(raw_config: dict[str, Any]) -> None:
    plan = _plan(raw_config | {"_profile": "cross-silo"})
    s = plan.strategy
    assert s.train_nodes_per_round == 10
    assert s.evaluate_nodes_per_round == 10
    assert s.min_replies == 10
    assert s.round_timeout == 3600.0
    assert s.sampling.min_available_nodes == 10


def test_edge_samples_half_and_needs_half_of_those(raw_config: dict[str, Any]) -> None:
    plan = _plan(raw_config | {"_profile": "edge"})
    s = plan.strategy
    assert s.sampling.min_available_nodes == 5
    assert s.train_nodes_per_round == 5
    assert s.min_replies == 3
    assert s.round_timeout == 120.0


def test_explicit_settings_win_over_the_profile(raw_config: dict[str, Any]) -> None:
    plan = _plan(raw_config | {"_profile": "edge"}, round_timeout=30.0, min_replies=1)
    assert plan.strategy.round_timeout == 30.0
    assert plan.strategy.min_replies == 1
    assert plan.strategy.sampling.fraction_train == 0.5


def test_unknown_profile_is_a_config_error(raw_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="deployment.profile"):
        _plan(raw_config | {"_profile": "mainframe"})


def test_messages_expire_with_their_round() -> None:
    with server_identity():
        msg = instruction(RecordDict(), node_id=1)
        grid = FakeGrid({1: lambda m: None})
        Exchange(grid, sleep=lambda _: None).__call__([msg], timeout=0.0)
    assert grid.sent[0].metadata.ttl == EXPIRY_MARGIN
