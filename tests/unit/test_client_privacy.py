"""The ClientApp's train handler under local DP: it enforces the node's own budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import instruction, server_identity
from flwr.app import Context, Message, RecordDict

from federator.client import app as client
from federator.client.mods import refusing
from federator.client.wire import ReplyCode
from federator.privacy import PrivacyLedger
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import FederationPlan, build_plan


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.fixture
def dp_plan(raw_config: dict[str, Any]) -> FederationPlan:
    raw = dict(raw_config)
    raw["privacy"] = {"local": {"target_epsilon": 4.0, "delta": 1e-5}}
    return build_plan(raw, source="test")


def _train(plan: FederationPlan, node_config: dict[str, Any], rnd: int = 1) -> Message:
    cfg = instructions_for(plan, run_id="run-1").to_config()
    cfg["server-round"] = rnd
    msg = instruction(
        RecordDict({"arrays": initial_arrays(plan.task(), 0), "config": cfg}),
        node_id=11,
        kind="train",
    )
    ctx = Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": 0, "num-partitions": plan.data.clients, **node_config},
        state=RecordDict(),
        run_config={},
    )
    return refusing(msg, ctx, client.train)


def test_dp_round_is_recorded_and_reported(dp_plan: FederationPlan, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    reply = _train(dp_plan, {"privacy-ledger": str(ledger), "max-epsilon": 100.0})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    m = reply.content["metrics"]
    assert 0 < float(m["dp-epsilon"]) <= 4.0  # type: ignore[arg-type]
    assert float(m["dp-epsilon-total"]) > 0  # type: ignore[arg-type]
    assert "dp-steps" not in m
    entries = PrivacyLedger(ledger).entries()
    assert len(entries) == 1
    assert entries[0].run == "run-1"
    assert entries[0].round == 1
    assert entries[0].charge.noise_multiplier == pytest.approx(
        float(m["dp-noise-multiplier"])  # type: ignore[arg-type]
    )


def test_exhausted_budget_refuses_and_records_nothing(
    dp_plan: FederationPlan, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.json"
    reply = _train(dp_plan, {"privacy-ledger": str(ledger), "max-epsilon": 0.01})
    assert reply.has_error()
    assert reply.error.code == ReplyCode.REFUSED
    assert "PrivacyBudgetExhausted" in reply.error.reason
    assert not ledger.exists()


def test_node_without_ledger_or_requiring_dp_refuses(
    dp_plan: FederationPlan, plan_without_dp: FederationPlan, tmp_path: Path
) -> None:
    reply = _train(dp_plan, {})
    assert reply.has_error()
    assert "privacy-ledger" in reply.error.reason
    reply = _train(plan_without_dp, {"max-epsilon": 5.0})
    assert reply.has_error()
    assert "requires local DP" in reply.error.reason


@pytest.fixture
def plan_without_dp(raw_config: dict[str, Any]) -> FederationPlan:
    return build_plan(raw_config, source="test")
