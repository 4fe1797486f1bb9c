"""The round loop with real ClientApp handlers on an in-process grid."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fakes import FakeGrid, Recorder, VirtualClock, client_handlers, server_identity
from flwr.app import Array, Message

from federator import FederationFailed
from federator.server.federation.events import RoundStatus
from federator.server.federation.exchange import Exchange
from federator.server.federation.instructions import ServerEvaluator
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.rounds import Federation
from federator.server.plan import FederationPlan, build_plan
from federator.simulations.partition import server_holdout
from federator.strategies.aggregation import FastAggregation, Median


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def make_plan(raw: dict[str, Any], **changes: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    for path, value in changes.items():
        section, key = path.split("__")
        raw.setdefault(section, {})[key] = value
    return build_plan(raw, source="test")


def federate(plan: FederationPlan, grid: FakeGrid, **kw: Any) -> tuple[Federation, Recorder]:
    rec = Recorder()
    clock = VirtualClock()  # a silent node's timeout passes instantly
    exchange = Exchange(grid, clock=clock, sleep=clock.sleep)
    fed = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=NodeDirectory(grid, salt="t", exchange=exchange),
        observers=[rec],
        exchange=exchange,
        **kw,
    )
    fed.run()
    return fed, rec


def test_rounds_train_evaluate_and_gate(raw_config: dict[str, Any]) -> None:
    plan = make_plan(
        raw_config,
        federation__rounds=3,
        training__lr=0.1,
        training__momentum=0.9,
        training__epochs=2,
        gate__threshold=0.5,
    )
    fed, rec = federate(plan, FakeGrid(client_handlers(4)))
    assert rec.started is not None
    assert len(rec.started.nodes) == 4
    assert [o.round for o in rec.rounds] == [1, 2, 3]
    for o in rec.rounds:
        assert o.status is RoundStatus.COMPLETED
        assert o.participants == 4
        assert len(o.eval_clients) == 4
        assert o.server_eval is not None
        assert o.decision is not None
        assert o.refusals == []
    accs = [o.server_eval.accuracy for o in rec.rounds if o.server_eval]
    assert accs[-1] > rec.started.initial_eval.accuracy + 0.4
    assert fed.gate.champion is not None


def test_pseudonyms_hide_labels(raw_config: dict[str, Any]) -> None:
    plan = make_plan(raw_config, federation__rounds=1)
    _, rec = federate(plan, FakeGrid(client_handlers(4)))
    names = {c.pseudonym for c in rec.rounds[0].train_clients}
    assert len(names) == 4
    assert not any("partition" in n for n in names)


def _nan_update(handler: Any) -> Any:
    def handle(msg: Message) -> Message:
        reply = handler(msg)
        if msg.metadata.message_type == "train":
            arrays = reply.content["arrays"]
            w = arrays["0.weight"].numpy()
            arrays["0.weight"] = Array(np.full_like(w, np.nan))
        return reply

    return handle


def test_bad_update_is_rejected_and_the_round_goes_on(raw_config: dict[str, Any]) -> None:
    plan = make_plan(raw_config, federation__rounds=2)
    honest = client_handlers(4)
    node_ids = list(honest)
    handlers = dict(honest)
    handlers[node_ids[1]] = _nan_update(honest[node_ids[1]])
    _, rec = federate(plan, FakeGrid(handlers))
    for o in rec.rounds:
        assert o.status is RoundStatus.COMPLETED
        assert o.participants == 3
        assert len(o.refusals) == 1
        assert o.refusals[0].phase == "train"
        assert "array '0.weight' contains NaN" in o.refusals[0].reason
        assert o.server_eval is not None
        assert np.isfinite(o.server_eval.loss)


def test_silent_node_is_left_out(raw_config: dict[str, Any]) -> None:
    plan = make_plan(raw_config, federation__rounds=1)
    handlers = client_handlers(4)
    silent = next(iter(handlers))
    original = handlers[silent]
    handlers[silent] = lambda m: original(m) if m.metadata.message_type == "query" else None
    _, rec = federate(plan, FakeGrid(handlers))
    assert rec.rounds[0].participants == 3
    assert rec.rounds[0].sampled == 4


def test_too_few_updates_skip_the_round_then_stop_the_run(raw_config: dict[str, Any]) -> None:
    plan = make_plan(raw_config, federation__rounds=5, strategy__min_replies=4)
    handlers = client_handlers(4)
    first = next(iter(handlers))
    handlers[first] = _nan_update(handlers[first])
    rec = Recorder()
    grid = FakeGrid(handlers)
    fed = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=NodeDirectory(grid, salt="t"),
        observers=[rec],
    )
    with pytest.raises(FederationFailed, match="3 rounds in a row were skipped.*3 of 4"):
        fed.run()
    assert [o.status for o in rec.rounds] == [RoundStatus.SKIPPED] * 3
    assert all(o.arrays is None and o.decision is None for o in rec.rounds)
    assert "minimum 4" in (rec.rounds[0].skip_reason or "")


def test_results_do_not_depend_on_flower_node_ids(raw_config: dict[str, Any]) -> None:
    plan = make_plan(
        raw_config, federation__rounds=2, strategy__fraction_train=0.5, data__clients=6
    )
    runs = []
    orders = []
    for id_seed in (1, 2):
        handlers = client_handlers(6, id_seed=id_seed)
        orders.append(sorted(range(6), key=lambda i: list(handlers)[i]))
        _, rec = federate(plan, FakeGrid(handlers))
        runs.append(
            [
                (o.server_eval.accuracy, o.server_eval.loss, o.participants)
                for o in rec.rounds
                if o.server_eval
            ]
        )
    assert orders[0] != orders[1]  # the two runs see nodes in different id orders
    assert runs[0] == runs[1]


def test_waiting_for_nodes_times_out_with_a_clear_error(raw_config: dict[str, Any]) -> None:
    plan = make_plan(raw_config)
    handlers = dict(list(client_handlers(4).items())[:2])
    grid = FakeGrid(handlers)
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    directory = NodeDirectory(grid, salt="t", clock=lambda: now[0], sleep=tick)
    rec = Recorder()
    fed = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=directory,
        observers=[rec],
        node_timeout=30,
    )
    with pytest.raises(FederationFailed, match="only 2 of the 4 nodes needed connected"):
        fed.run()
    assert rec.waits == [(2, 4)]


def test_robust_aggregation_runs_through_the_round_loop(raw_config: dict[str, Any]) -> None:
    """Our own median, inside Guarded, completes a round."""
    plan = make_plan(raw_config, federation__rounds=1, strategy__name="fedmedian")
    fed, rec = federate(plan, FakeGrid(client_handlers(4)))
    assert isinstance(fed.strategy.inner, FastAggregation)
    assert isinstance(fed.strategy.inner.aggregator, Median)
    assert rec.rounds[0].status is RoundStatus.COMPLETED
    assert rec.rounds[0].participants == 4
    assert rec.rounds[0].arrays is not None


def test_a_round_our_aggregator_refuses_is_skipped_with_its_reason(
    raw_config: dict[str, Any],
) -> None:
    """Bulyan with f = 0 needs 3 updates; two NaN updates are rejected, two remain."""
    plan = make_plan(raw_config, federation__rounds=1, strategy__name="bulyan")
    handlers = client_handlers(4)
    for node in list(handlers)[:2]:
        handlers[node] = _nan_update(handlers[node])
    _, rec = federate(plan, FakeGrid(handlers))
    assert rec.rounds[0].status is RoundStatus.SKIPPED
    assert "aggregation failed: Bulyan with f=0 needs at least 4f+3=3 replies, got 2" in (
        rec.rounds[0].skip_reason or ""
    )
