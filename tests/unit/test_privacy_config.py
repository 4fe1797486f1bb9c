"""The ``[privacy]`` section: bad settings are clear errors before anything starts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from federator import ConfigError
from federator.server.plan import build_plan


@pytest.mark.parametrize(
    ("privacy", "strategy", "match"),
    [
        ({"local": {"target_epsilon": 1.0}}, "fedavg", r"privacy\.local\.delta: required"),
        ({"local": {"target_epsilon": 0, "delta": 1e-5}}, "fedavg", "target_epsilon"),
        ({"local": {"target_epsilon": 1, "delta": 1.5}}, "fedavg", r"privacy\.local\.delta"),
        (
            {"local": {"target_epsilon": 1, "delta": 1e-5, "max_grad_norm": 0}},
            "fedavg",
            "max_grad_norm",
        ),
        ({"local": {"target_epsilon": 1, "delta": 1e-5}}, "fedprox", "FedProx"),
        (
            {"central": {"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": 3}},
            "fedavg",
            r"privacy\.central\.delta: required",
        ),
        (
            {"secagg": {"num_shares": 3, "reconstruction_threshold": 2}},
            "fedmedian",
            "secure aggregation hides",
        ),
        (
            {"secagg": {"num_shares": 3, "reconstruction_threshold": 3}},
            "fedavg",
            "less than num_shares",
        ),
    ],
)
def test_bad_privacy_settings(
    raw_config: dict[str, Any], privacy: dict[str, Any], strategy: str, match: str
) -> None:
    raw = copy.deepcopy(raw_config)
    raw["privacy"] = privacy
    raw.setdefault("strategy", {})["name"] = strategy
    with pytest.raises(ConfigError, match=match):
        build_plan(raw, source="test")


def test_local_dp_plan(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["privacy"] = {"local": {"target_epsilon": 3, "delta": 1e-5, "accountant": "prv"}}
    plan = build_plan(raw, source="test")
    assert plan.privacy.local is not None
    assert plan.privacy.local.rounds == plan.rounds
    assert plan.privacy.local.accountant.value == "prv"
    assert plan.privacy.central is None
    assert plan.privacy.secagg is None
