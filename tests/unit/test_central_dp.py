"""Central DP: Flower's clipping wrappers and accountant inside Federator's round loop.

Real ClientApp handlers on an in-process grid. Expected ε values come from Google's
dp-accounting directly and from the exact (ε, δ) curve of the Gaussian mechanism.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from statistics import NormalDist
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from fakes import FakeGrid, Recorder, VirtualClock, client_handlers, server_identity
from flwr.app import Message

from federator import ConfigError
from federator.privacy.central import UNIFORM_WEIGHT
from federator.server.federation.checkpoint import Component
from federator.server.federation.events import RoundStatus
from federator.server.federation.exchange import Exchange
from federator.server.federation.instructions import ServerEvaluator
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.rounds import Federation
from federator.server.plan import FederationPlan, build_plan
from federator.simulations.partition import server_holdout

DELTA = 1e-5
SIGMA = 1.5


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def plan_with(raw: dict[str, Any], *, rounds: int, **central: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    raw["federation"]["rounds"] = rounds
    raw["privacy"] = {"central": central}
    return build_plan(raw, source="test")


def federation(plan: FederationPlan, grid: FakeGrid) -> tuple[Federation, Recorder]:
    rec = Recorder()
    clock = VirtualClock()
    exchange = Exchange(grid, clock=clock, sleep=clock.sleep)
    fed = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=NodeDirectory(grid, salt="t", exchange=exchange),
        observers=[rec],
        exchange=exchange,
    )
    return fed, rec


def capturing(handlers: dict[int, Any]) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """Handlers that keep a copy of every train instruction's model and reply."""
    seen: list[dict[str, Any]] = []

    def wrap(handler: Any) -> Any:
        def handle(msg: Message) -> Message:
            reply = handler(msg)
            if msg.metadata.message_type == "train" and not reply.has_error():
                seen.append(
                    {
                        "sent": {k: v.numpy().copy() for k, v in msg.content["arrays"].items()},
                        "config": dict(msg.content["config"]),
                        "reply": {k: v.numpy().copy() for k, v in reply.content["arrays"].items()},
                        "examples": int(reply.content["metrics"]["num-examples"]),
                    }
                )
            return reply

        return handle

    return {k: wrap(h) for k, h in handlers.items()}, seen


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel().astype(np.float64) for a in arrays.values()])


def expected_epsilon(releases: int) -> float:
    """dp-accounting, composed by hand: ``releases`` Gaussian mechanisms, no sampling."""
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(SIGMA), releases)
    return float(acc.get_epsilon(DELTA))


def exact_epsilon(releases: int) -> float:
    """The tight ε of k Gaussian releases (Balle & Wang 2018): one Gaussian with μ = √k/σ."""
    mu, phi = math.sqrt(releases) / SIGMA, NormalDist().cdf

    def delta(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta(mid) > DELTA else (lo, mid)
    return hi


def test_accountant_stops_the_federation_before_max_epsilon(raw_config: dict[str, Any]) -> None:
    eps2, eps3 = expected_epsilon(2), expected_epsilon(3)
    plan = plan_with(
        raw_config,
        rounds=5,
        noise_multiplier=SIGMA,
        clipping_norm=1.0,
        delta=DELTA,
        max_epsilon=(eps2 + eps3) / 2,
    )
    fed, rec = federation(plan, FakeGrid(client_handlers(4)))
    fed.run()
    assert [o.round for o in rec.rounds] == [1, 2]
    assert all(o.status is RoundStatus.COMPLETED for o in rec.rounds)
    spent = [o.privacy["central-epsilon"] for o in rec.rounds]
    assert spent == pytest.approx([expected_epsilon(1), eps2], rel=1e-9)
    assert rec.rounds[-1].privacy["central-delta"] == DELTA
    assert fed.stop_reason is not None
    assert "round 3 would exceed the central DP budget" in fed.stop_reason
    # Sound and not loose: RDP ε is above the exact ε of the mechanism, and close to it.
    for k, eps in enumerate(spent, start=1):
        assert exact_epsilon(k) <= eps <= 1.5 * exact_epsilon(k)


def test_accountant_state_resumes_from_a_checkpoint(raw_config: dict[str, Any]) -> None:
    central = {"noise_multiplier": SIGMA, "clipping_norm": 1.0, "delta": DELTA}
    fed, rec = federation(plan_with(raw_config, rounds=2, **central), FakeGrid(client_handlers(4)))
    fed.run()
    checkpoint = rec.rounds[-1].checkpoint
    assert checkpoint is not None
    assert checkpoint[Component.PRIVACY]["compositions"]
    again, rec2 = federation(
        plan_with(raw_config, rounds=3, **central), FakeGrid(client_handlers(4))
    )
    again.checkpointer.restore(checkpoint)
    again.run(resumed=True)
    assert [o.round for o in rec2.rounds] == [3]
    assert rec2.rounds[0].privacy["central-epsilon"] == pytest.approx(expected_epsilon(3), rel=1e-9)


def test_server_side_clipping_bounds_the_step(raw_config: dict[str, Any]) -> None:
    clip = 1e-3
    handlers, seen = capturing(client_handlers(4))
    fed, rec = federation(
        plan_with(raw_config, rounds=1, noise_multiplier=0.0, clipping_norm=clip),
        FakeGrid(handlers),
    )
    fed.run()
    outcome = rec.rounds[0]
    assert outcome.arrays is not None
    new = flat({k: v.numpy() for k, v in outcome.arrays.items()})
    start = flat(seen[0]["sent"])
    raw_steps = [np.linalg.norm(flat(s["reply"]) - start) for s in seen]
    assert min(raw_steps) > 100 * clip  # the clients' own updates are far larger
    step = np.linalg.norm(new - start)
    assert 0 < step <= clip * (1 + 1e-4)


def test_client_side_clipping_happens_before_the_update_leaves(
    raw_config: dict[str, Any],
) -> None:
    clip = 1e-3
    handlers, seen = capturing(client_handlers(4))
    fed, rec = federation(
        plan_with(raw_config, rounds=1, noise_multiplier=0.0, clipping_norm=clip, side="client"),
        FakeGrid(handlers),
    )
    fed.run()
    assert rec.rounds[0].status is RoundStatus.COMPLETED
    assert len(seen) == 4
    for s in seen:
        assert s["config"]["clipping_norm"] == clip
        sent_norm = np.linalg.norm(flat(s["reply"]) - flat(s["sent"]))
        assert sent_norm <= clip * (1 + 1e-4)


def test_updates_are_averaged_with_equal_weights(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["data"] |= {"partitioner": "dirichlet", "alpha": 0.3}  # unequal client sizes
    handlers, seen = capturing(client_handlers(4))
    fed, rec = federation(
        plan_with(raw, rounds=1, noise_multiplier=0.0, clipping_norm=1e6), FakeGrid(handlers)
    )
    fed.run()
    outcome = rec.rounds[0]
    assert outcome.arrays is not None
    sizes = [s["examples"] for s in seen]
    assert len(set(sizes)) > 1
    replies = np.stack([flat(s["reply"]) for s in seen])
    new = flat({k: v.numpy() for k, v in outcome.arrays.items()})
    assert np.allclose(new, replies.mean(axis=0), atol=1e-6)
    weighted = np.average(replies, axis=0, weights=sizes)
    assert not np.allclose(new, weighted, atol=1e-6)
    # The weight is the server's business: clients never report it.
    assert all(UNIFORM_WEIGHT not in c.metrics for c in outcome.train_clients)


def test_adaptive_client_side_clipping_runs(raw_config: dict[str, Any]) -> None:
    handlers, seen = capturing(client_handlers(4))
    fed, rec = federation(
        plan_with(
            raw_config,
            rounds=2,
            clipping="adaptive",
            side="client",
            noise_multiplier=0.1,
            clipping_norm=0.01,
        ),
        FakeGrid(handlers),
    )
    fed.run()
    assert [o.status for o in rec.rounds] == [RoundStatus.COMPLETED] * 2
    norms = [s["config"]["clipping_norm"] for s in seen]
    assert norms[0] == 0.01
    assert norms[-1] != norms[0]  # the norm moved towards the target quantile


@pytest.mark.parametrize("strategy", ["fedmedian", "krum"])
def test_central_dp_with_a_non_averaging_strategy_is_a_config_error(
    raw_config: dict[str, Any], strategy: str
) -> None:
    raw = copy.deepcopy(raw_config)
    raw["strategy"] = {"name": strategy}
    with pytest.raises(ConfigError, match="noise is calibrated for a mean"):
        plan_with(raw, rounds=1, noise_multiplier=1.0, clipping_norm=1.0)


def test_a_missing_update_skips_the_round_instead_of_under_noising(
    raw_config: dict[str, Any],
) -> None:
    handlers = client_handlers(4)
    silent = next(iter(handlers))
    original = handlers[silent]
    handlers[silent] = lambda m: original(m) if m.metadata.message_type == "query" else None
    fed, rec = federation(
        plan_with(raw_config, rounds=1, noise_multiplier=1.0, clipping_norm=1.0),
        FakeGrid(handlers),
    )
    fed.run()
    outcome = rec.rounds[0]
    assert outcome.status is RoundStatus.SKIPPED
    assert outcome.skip_reason is not None
    assert "3 of the 4 sampled clients" in outcome.skip_reason
