"""Nodes that leave mid-federation: the round loop never waits forever for them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeGrid, VirtualClock, client_handlers, server_identity

from federator import FederationFailed
from federator.server.federation.events import RoundOutcome, RoundStatus
from federator.server.federation.exchange import Exchange
from federator.server.federation.instructions import ServerEvaluator
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.rounds import Federation
from federator.server.plan import build_plan
from federator.simulations.partition import server_holdout


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


class Leaving:
    """Removes nodes from the grid after given rounds (as a crashed SuperNode disappears)."""

    def __init__(
        self, grid: FakeGrid, schedule: dict[int, list[int]], *, back_after: int | None
    ) -> None:
        self.grid, self.schedule, self.back_after = grid, schedule, back_after
        self.away: dict[int, Any] = {}
        self.rounds: list[RoundOutcome] = []

    def on_waiting(self, connected: int, needed: int) -> None: ...
    def on_start(self, event: object) -> None: ...

    def on_round(self, outcome: RoundOutcome) -> None:
        self.rounds.append(outcome)
        for node in self.schedule.get(outcome.round, []):
            if node in self.grid.handlers:
                self.away[node] = self.grid.handlers.pop(node)
        if outcome.round == self.back_after:
            self.grid.handlers.update(self.away)


def _run(
    raw: dict[str, Any], schedule_of: Any, rounds: int, back_after: int | None = None
) -> tuple[Leaving, Exception | None]:
    raw = copy.deepcopy(raw)
    raw["federation"]["rounds"] = rounds
    raw["data"]["clients"] = 3
    raw["strategy"] = {"min_available_nodes": 2, "min_replies": 2, "round_timeout": 60.0}
    plan = build_plan(raw, source="test")
    grid = FakeGrid(client_handlers(3))
    nodes = list(grid.handlers)
    observer = Leaving(grid, schedule_of(nodes), back_after=back_after)
    clock = VirtualClock()
    exchange = Exchange(grid, clock=clock, sleep=clock.sleep)
    fed = Federation(
        plan,
        grid=grid,
        evaluator=ServerEvaluator(plan.task(), server_holdout(plan.data)),
        directory=NodeDirectory(grid, salt="t", exchange=exchange, clock=clock, sleep=clock.sleep),
        observers=[observer],
        exchange=exchange,
        clock=clock,
    )
    try:
        fed.run()
    except FederationFailed as err:
        return observer, err
    return observer, None


def test_one_node_leaves_and_the_run_finishes(raw_config: dict[str, Any]) -> None:
    observer, error = _run(raw_config, lambda nodes: {1: nodes[:1]}, rounds=3)
    assert error is None
    assert [o.status for o in observer.rounds] == [RoundStatus.COMPLETED] * 3
    assert [o.participants for o in observer.rounds] == [3, 2, 2]


def test_two_nodes_leave_and_rounds_are_skipped_with_the_reason(
    raw_config: dict[str, Any],
) -> None:
    observer, error = _run(raw_config, lambda nodes: {1: nodes[:2]}, rounds=5)
    assert [o.status for o in observer.rounds] == [
        RoundStatus.COMPLETED,
        *[RoundStatus.SKIPPED] * 3,
    ]
    for o in observer.rounds[1:]:
        assert o.skip_reason == "only 1 of the 2 nodes needed connected within 60 s"
        assert o.sampled == 0
        assert o.arrays is None
    assert error is not None
    assert "3 rounds in a row were skipped" in str(error)


def test_a_node_that_returns_takes_part_again(raw_config: dict[str, Any]) -> None:
    observer, error = _run(
        raw_config, lambda nodes: {1: nodes[:1], 2: [-1]}, rounds=3, back_after=2
    )
    assert error is None
    assert [o.participants for o in observer.rounds] == [3, 2, 3]
