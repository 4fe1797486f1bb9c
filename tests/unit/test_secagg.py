"""SecAgg+ in process: Flower's real workflow and `secaggplus_mod`, Federator's real ClientApp.

Stage messages are delivered to the ClientApp of each simulated partition as deep copies (as
if serialised), so the whole protocol — keys, shares, masks, unmasking — runs in milliseconds.
Expected means come from the ordinary ``train`` handler, run separately on the same messages.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fakes import client_context, instruction, server_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from federator import ConfigError, UpdateRejected
from federator.client import app as client
from federator.client.wire import NUM_EXAMPLES
from federator.privacy import secagg
from federator.privacy import secagg_client as sc
from federator.server._flwr_compat import FlowerCompat
from federator.server.federation._secagg_round import apply_mean
from federator.server.federation.checkpoint import Component
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import FederationPlan, build_plan

PARAMS = secagg.SecAggParams(
    num_shares=3,
    reconstruction_threshold=2,
    clipping_range=8.0,
    quantization_range=4_194_304,
    max_weight=500.0,
    timeout=30.0,
)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


class Router:
    """The ``exchange`` the workflow uses: each message goes, as a deep copy, to the ClientApp
    of its node; nodes listed in ``silent[stage]`` never answer (a dropout)."""

    def __init__(self, partitions: int, silent: dict[str, set[int]] | None = None) -> None:
        self.contexts = {100 + p: client_context(p, partitions, 100 + p) for p in range(partitions)}
        self.silent = silent or {}
        self.sent: list[Message] = []

    def __call__(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            stage = str(msg.content.config_records["secaggplus_configs"]["stage"])
            node = msg.metadata.dst_node_id
            if node in self.silent.get(stage, set()):
                continue
            delivered = copy.deepcopy(msg)
            delivered.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(client.app(delivered, self.contexts[node]))
        return replies


GRID: Any = SimpleNamespace(run=SimpleNamespace(run_id=1))


@pytest.fixture
def plan(raw_config: dict[str, Any]) -> FederationPlan:
    raw = copy.deepcopy(raw_config)
    raw["data"]["clients"] = 3
    raw["data"]["partitioner"] = "dirichlet"  # unequal sizes make the weighting visible
    return build_plan(raw, source="test")


def _config(plan: FederationPlan) -> ConfigRecord:
    cfg = instructions_for(plan).to_config()
    cfg["server-round"] = 1
    return cfg


def _round(
    plan: FederationPlan,
    router: Router,
    params: secagg.SecAggParams = PARAMS,
    *,
    stock: bool = False,
) -> secagg.SecAggResult:
    arrays = initial_arrays(plan.task(), 0)
    return secagg.run_secagg_round(
        grid=GRID,
        exchange=router,
        server_round=1,
        node_ids=sorted(router.contexts),
        arrays=[a.numpy() for a in arrays.values()],
        keys=list(arrays.keys()),
        config=dict(_config(plan)),
        params=params,
        workflow=FlowerCompat(stock=stock).secagg_workflow,
    )


def _plain_updates(plan: FederationPlan, router: Router) -> dict[int, tuple[int, list[np.ndarray]]]:
    """Node → (examples, local − global) from the ordinary ``train`` handler."""
    arrays = initial_arrays(plan.task(), 0)
    out = {}
    for node in router.contexts:
        msg = instruction(RecordDict({"arrays": arrays, "config": _config(plan)}), node_id=node)
        reply = client.train(msg, client_context(node - 100, 3, node))
        after = reply.content["arrays"]
        update = [
            after[k].numpy().astype(np.float64) - a.numpy().astype(np.float64)
            for k, a in arrays.items()
        ]
        out[node] = (int(reply.content["metrics"][NUM_EXAMPLES]), update)
    return out


def _weighted_mean(parts: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    total = sum(n for n, _ in parts)
    return [sum(n * u[i] for n, u in parts) / total for i in range(len(parts[0][1]))]


def test_mean_is_exact_with_a_dropout_below_the_threshold(plan: FederationPlan) -> None:
    router = Router(3, silent={"collect_masked_vectors": {102}})
    result = _round(plan, router)
    assert result.abort_reason is None
    assert result.mean is not None
    assert [s.node_id for s in result.survivors] == [100, 101]
    assert set(result.dropped) == {102}
    assert "no reply within 30 s (collect_masked_vectors)" in result.dropped[102]
    plain = _plain_updates(plan, router)
    assert [s.weight for s in result.survivors] == [plain[100][0], plain[101][0]]
    assert plain[100][0] != plain[101][0]
    expected = _weighted_mean([plain[100], plain[101]])
    tol = PARAMS.tolerance(survivors=2, total_weight=plain[100][0] + plain[101][0])
    assert tol < 1e-4
    for got, want in zip(result.mean, expected, strict=True):
        assert np.abs(got - want).max() <= tol
    # Not the unweighted mean, and not a mean that includes the dropped client.
    unweighted = _weighted_mean([(1, plain[100][1]), (1, plain[101][1])])
    everyone = _weighted_mean(list(plain.values()))
    assert max(np.abs(g - u).max() for g, u in zip(result.mean, unweighted, strict=True)) > 10 * tol
    assert max(np.abs(g - e).max() for g, e in zip(result.mean, everyone, strict=True)) > 10 * tol


def test_stage_messages_expire_with_their_stage_and_use_their_own_action(
    plan: FederationPlan,
) -> None:
    router = Router(3)
    result = _round(plan, router)
    assert not result.aborted
    assert len(router.sent) == 4 * 3  # four stages, three nodes
    assert {m.metadata.message_type for m in router.sent} == {"train.secagg"}
    assert {m.metadata.ttl for m in router.sent} == {PARAMS.timeout}
    metrics = result.survivors[0].metrics
    assert {"train-loss", NUM_EXAMPLES} <= set(metrics)  # plaintext metrics still arrive


def test_beyond_the_threshold_the_round_aborts_with_a_reason(plan: FederationPlan) -> None:
    router = Router(3, silent={"collect_masked_vectors": {101, 102}})
    result = _round(plan, router)
    assert result.aborted
    assert result.survivors == ()
    assert set(result.dropped) == {101, 102}
    assert result.abort_reason is not None
    assert "aborted in stage collect_masked_vectors: 1 of 3" in result.abort_reason
    assert "reconstruction threshold" in result.abort_reason


def test_a_dropout_during_setup_is_survived_thanks_to_our_patch(plan: FederationPlan) -> None:
    result = _round(plan, Router(3, silent={"setup": {102}}))
    assert [s.node_id for s in result.survivors] == [100, 101]
    stock = _round(plan, Router(3, silent={"setup": {102}}), stock=True)
    assert stock.aborted  # what Flower 1.42 alone does


def test_a_client_refusal_is_a_dropout_with_its_reason(plan: FederationPlan) -> None:
    too_narrow = secagg.SecAggParams(**{**PARAMS.__dict__, "clipping_range": 1e-6})
    result = _round(plan, Router(3), too_narrow)
    assert result.aborted
    assert all("outside SecAgg+'s clipping range" in r for r in result.dropped.values())


def test_a_stale_stage_message_is_refused() -> None:
    seen: list[Message] = []
    mod = sc._drop_expired(clock=lambda: 1e12)

    def handler(msg: Message, ctx: Context) -> Message:
        seen.append(msg)
        return msg

    msg = instruction(RecordDict(), node_id=1, kind="train.secagg")
    msg.metadata.ttl = 5.0
    with pytest.raises(UpdateRejected, match="stale"):
        mod(msg, client_context(0, 1, 1), handler)
    fresh = sc._drop_expired(clock=lambda: msg.metadata.created_at + 4.0)
    fresh(msg, client_context(0, 1, 1), handler)
    assert seen == [msg]


def test_update_is_local_minus_global_and_must_fit_the_encoding() -> None:
    g = ArrayRecord({"w": Array(np.array([1.0, 2.0], dtype=np.float32))})
    local = ArrayRecord({"w": Array(np.array([1.5, 1.0], dtype=np.float32))})
    (update,) = sc.secagg_update(g, local, clipping_range=1.0)
    np.testing.assert_array_equal(update, [0.5, -1.0])
    assert update.dtype == np.float64
    with pytest.raises(UpdateRejected, match="clipping range"):
        sc.secagg_update(g, local, clipping_range=0.9)
    nan = ArrayRecord({"w": Array(np.array([np.nan, 1.0], dtype=np.float32))})
    with pytest.raises(UpdateRejected, match="NaN"):
        sc.secagg_update(g, nan, clipping_range=8.0)


def test_weight_is_the_example_count_capped_at_max_weight() -> None:
    assert sc.secagg_weight(300, 500.0) == 300
    assert sc.secagg_weight(900, 500.0) == 500


def test_tolerance_is_the_quantisation_step_scaled_by_the_weights() -> None:
    step = 16 / 4_194_304
    assert math.isclose(PARAMS.tolerance(survivors=2, total_weight=250.0), 2 * step * 2)


def test_apply_mean_keeps_dtypes_and_rounds_integer_buffers() -> None:
    arrays = ArrayRecord(
        {
            "w": Array(np.array([1.0, 2.0], dtype=np.float32)),
            "n": Array(np.array(3, dtype=np.int64)),
        }
    )
    out = apply_mean(arrays, [np.array([0.25, -0.5]), np.array(0.6)])
    np.testing.assert_array_equal(out["w"].numpy(), np.array([1.25, 1.5], dtype=np.float32))
    assert out["w"].numpy().dtype == np.float32
    assert out["n"].numpy() == 4
    assert out["n"].numpy().dtype == np.int64


@pytest.mark.parametrize(
    ("secagg_cfg", "extra", "match"),
    [
        ({"num_shares": 3, "reconstruction_threshold": 3}, {}, "less than num_shares"),
        (
            {"num_shares": 3, "reconstruction_threshold": 2, "quantization_range": 2**31},
            {},
            "overflow",
        ),
        (
            {"num_shares": 3, "reconstruction_threshold": 2},
            {"central": {"noise_multiplier": 1.0, "clipping_norm": 1.0, "side": "client"}},
            "not yet combinable with privacy.central",
        ),
    ],
)
def test_secagg_config_problems(
    raw_config: dict[str, Any], secagg_cfg: dict[str, Any], extra: dict[str, Any], match: str
) -> None:
    raw = copy.deepcopy(raw_config)
    raw["privacy"] = {"secagg": secagg_cfg, **extra}
    with pytest.raises(ConfigError, match=match):
        build_plan(raw, source="test")


def test_secagg_plan_carries_max_weight(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["privacy"] = {"secagg": {"num_shares": 3, "reconstruction_threshold": 2, "max_weight": 64}}
    plan = build_plan(raw, source="test")
    assert plan.privacy.secagg is not None
    assert plan.privacy.secagg.max_weight == 64.0


def test_flowers_legacy_api_is_used_in_the_secagg_modules_only() -> None:
    from pathlib import Path

    root = Path(client.__file__).resolve().parents[1]
    legacy = (
        "flwr.server.",
        "from flwr.server ",
        "flwr.compat",
        "flwr.client.",
        "flwr.common.secure_aggregation",
        "FitIns",
        "FitRes",
        "LegacyContext",
    )
    users = {
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if not {"tests", ".venv", "federator-runs"} & set(path.relative_to(root).parts)
        and any(marker in path.read_text() for marker in legacy)
    }
    assert users == {
        "privacy/secagg.py",
        "privacy/secagg_client.py",
        "privacy/_secagg_server.py",
        "server/_flwr_compat/__init__.py",  # the switch between Flower's workflow and ours
        "server/_flwr_compat/secagg_workflow.py",
        "server/_flwr_compat/sim_dispatch.py",  # the Simulation Engine lives in flwr.server
        "simulations/bench/aggregation.py",  # its reference: Flower's legacy aggregate_krum
    }


def test_the_round_loop_skips_an_aborted_round_and_registers_survivors_only(
    raw_config: dict[str, Any],
) -> None:
    from fakes import FakeGrid, VirtualClock

    from federator.server.federation.events import RoundStatus
    from federator.server.federation.exchange import Exchange
    from federator.server.federation.instructions import ServerEvaluator
    from federator.server.federation.nodes import NodeDirectory
    from federator.server.federation.rounds import Federation
    from federator.simulations.partition import client_data, server_holdout

    raw = copy.deepcopy(raw_config)
    raw["federation"]["rounds"] = 3
    raw["data"]["clients"] = 3
    raw["privacy"] = {"secagg": {"num_shares": 3, "reconstruction_threshold": 2}}
    plan = build_plan(raw, source="test")
    silent = {"1": {102}, "2": {101, 102}}  # round → nodes that never send a masked vector

    def handler(node: int) -> Any:
        ctx = client_context(node - 100, 3, node)

        def handle(msg: Message) -> Message | None:
            if msg.metadata.message_type == "train.secagg":
                stage = msg.content.config_records["secaggplus_configs"]["stage"]
                if stage == "collect_masked_vectors" and node in silent.get(
                    msg.metadata.group_id, set()
                ):
                    return None
            return client.app(copy.deepcopy(msg), ctx)

        return handle

    class Grid(FakeGrid):
        run = SimpleNamespace(run_id=1)

    grid = Grid({n: handler(n) for n in (100, 101, 102)})
    clock = VirtualClock()
    exchange = Exchange(grid, clock=clock, sleep=clock.sleep)
    outcomes = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=NodeDirectory(grid, salt="t", exchange=exchange),
        observers=[],
        exchange=exchange,
    ).run()
    assert [o.status for o in outcomes] == [
        RoundStatus.COMPLETED,
        RoundStatus.SKIPPED,
        RoundStatus.COMPLETED,
    ]
    first, aborted, last = outcomes
    sizes = sorted(len(client_data(plan.data, p).train) for p in (0, 1))
    assert sorted(c.num_examples for c in first.train_clients) == sizes
    assert [r.phase for r in first.refusals] == ["train"]
    assert "SecAgg+ dropout" in first.refusals[0].reason
    assert "train-loss" in first.train_metrics
    assert aborted.arrays is None
    assert aborted.decision is None
    assert aborted.skip_reason is not None
    assert "secure aggregation aborted" in aborted.skip_reason
    assert len(aborted.refusals) == 2
    assert last.participants == 3
    assert all(s.checkpoint is not None for s in outcomes)
    assert aborted.checkpoint is not None
    assert first.arrays is not None
    for key, value in first.arrays.items():  # the skipped round left the model as it was
        saved = aborted.checkpoint[Component.LOOP]["arrays"][key]
        np.testing.assert_array_equal(saved, value.numpy())


def test_local_dp_under_secagg_spends_and_refuses_as_the_train_handler_does(
    plan: FederationPlan, tmp_path: Any
) -> None:
    from federator.privacy import PrivacyLedger

    dp = build_plan(
        {
            "federation": {"name": "t", "rounds": 2},
            "task": {"name": "digits-mlp"},
            "data": {"clients": 3, "partitioner": "dirichlet"},
            "tracking": {"runs_dir": str(tmp_path / "runs")},
            "privacy": {"local": {"target_epsilon": 4.0, "delta": 1e-5}},
        },
        source="test",
    )
    router = Router(3)
    for node, ctx in router.contexts.items():
        ctx.node_config["privacy-ledger"] = str(tmp_path / f"ledger-{node}.json")
    router.contexts[102].node_config["max-epsilon"] = 0.01  # this node's budget is spent
    result = _round(dp, router)
    assert [s.node_id for s in result.survivors] == [100, 101]
    assert "PrivacyBudgetExhausted" in result.dropped[102]
    for survivor in result.survivors:
        assert 0 < float(survivor.metrics["dp-epsilon"]) <= 4.0  # type: ignore[arg-type]
        assert len(PrivacyLedger(tmp_path / f"ledger-{survivor.node_id}.json").entries()) == 1
    assert PrivacyLedger(tmp_path / "ledger-102.json").entries() == []
