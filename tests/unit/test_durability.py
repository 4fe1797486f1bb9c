"""Durability: the commit lag is measured, and the round loop waits when writes fall behind.

The ledger on its own (a fake clock, threads standing in for the writer), then the real
tracking writer against a local SQLite MLflow store with a writer made slow on purpose.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeGrid, client_handlers, server_identity

from federator import TrackingError
from federator.server.federation.checkpoint import CHECKPOINT_TAG
from federator.server.federation.durability import DurabilityLedger
from federator.server.federation.events import RoundOutcome
from federator.server.federation.runner import run_federation
from federator.server.plan import FederationPlan, build_plan
from federator.server.progress import LogProgress
from federator.server.tracking._export import FLAVOUR_TAG, FlavourState, ModelExporter
from federator.server.tracking._versions import Registrar


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lag_counts_the_rounds_that_ended_before_a_commit() -> None:
    clock = _Clock()
    ledger = DurabilityLedger(max_unsaved=3, clock=clock)
    ledger.ended(1)
    clock.now += 0.5
    ledger.committed(1)  # before round 2 ended: lag 0 rounds, 0.5 s
    ledger.ended(2)
    ledger.ended(3)
    ledger.ended(4)
    clock.now += 2.0
    ledger.committed(2)  # rounds 3 and 4 ended first: lag 2, 2.0 s
    ledger.committed(3)  # round 4 ended first: lag 1
    report = ledger.report()
    assert report.saved_through == 3
    assert report.rounds_saved == 3
    assert report.lag_rounds_worst == 2
    assert report.lag_rounds_median == 1
    assert report.lag_seconds_worst == pytest.approx(2.0)
    assert report.lag_seconds_median == pytest.approx(2.0)


def test_no_wait_while_within_the_allowed_lag() -> None:
    ledger = DurabilityLedger(max_unsaved=1)
    ledger.ended(1)
    told: list[tuple[int, int]] = []
    assert ledger.hold_back(1, check=lambda: None, on_wait=lambda r, s: told.append((r, s))) == 0
    assert told == []
    assert ledger.report().waits == 0


def test_the_round_loop_waits_until_the_older_round_is_committed() -> None:
    ledger = DurabilityLedger(max_unsaved=1)
    for r in (1, 2):
        ledger.ended(r)
    told: list[tuple[int, int]] = []
    committed_at: list[float] = []

    def writer() -> None:
        time.sleep(0.3)
        committed_at.append(time.monotonic())
        ledger.committed(1)

    t = threading.Thread(target=writer)
    t.start()
    waited = ledger.hold_back(2, check=lambda: None, on_wait=lambda r, s: told.append((r, s)))
    returned_at = time.monotonic()
    t.join()
    assert told == [(2, 0)]  # said once, with what was saved when waiting began
    assert committed_at
    assert returned_at >= committed_at[0]
    assert waited >= 0.25
    report = ledger.report()
    assert (report.waits, report.saved_through) == (1, 1)


def test_max_unsaved_zero_waits_for_the_round_itself() -> None:
    ledger = DurabilityLedger(max_unsaved=0)
    ledger.ended(1)
    timer = threading.Timer(0.1, ledger.committed, args=(1,))
    timer.start()
    assert ledger.hold_back(1, check=lambda: None, poll=0.01) > 0
    timer.join()


def test_a_dead_writer_does_not_leave_the_round_loop_waiting() -> None:
    ledger = DurabilityLedger(max_unsaved=1)
    ledger.ended(1)
    ledger.ended(2)

    def check() -> None:
        raise TrackingError("MLflow write 'round 1' failed: disk full")

    with pytest.raises(TrackingError, match="disk full"):
        ledger.hold_back(2, check=check, poll=0.01)


def test_a_negative_allowance_is_refused() -> None:
    with pytest.raises(ValueError, match="max_unsaved"):
        DurabilityLedger(max_unsaved=-1)


# -- the real writer, made slow ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _plan(raw: dict[str, Any], rounds: int = 4, **tracking: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    raw["federation"]["rounds"] = rounds
    raw["training"] = {"lr": 0.1, "momentum": 0.9}
    raw["tracking"].update(tracking)
    return build_plan(raw, source="test")


def _client(plan: FederationPlan) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=plan.tracking.uri, registry_uri=plan.tracking.uri)


class _SavedAtEachRound(LogProgress):
    """Notes, as each round is shown, the last round the writer had committed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        super().__init__(self.lines.append)
        self.saved_when_shown: dict[int, int] = {}
        self.held: list[tuple[int, int]] = []
        self._last = 0

    def saved(self, round_: int) -> None:
        self._last = max(self._last, round_)
        super().saved(round_)

    def held_back(self, round_: int, saved_through: int) -> None:
        self.held.append((round_, saved_through))
        super().held_back(round_, saved_through)

    def on_round(self, outcome: RoundOutcome) -> None:
        self.saved_when_shown[outcome.round] = self._last
        super().on_round(outcome)


@pytest.mark.parametrize("allowed", [0, 1, 2])
def test_a_slow_writer_holds_the_round_loop_back(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, allowed: int
) -> None:
    plan = _plan(raw_config, max_unsaved_rounds=allowed)
    original = Registrar.register

    def slow(self: Registrar, outcome: RoundOutcome) -> Any:
        time.sleep(1.0)  # far longer than a round of this federation
        return original(self, outcome)

    monkeypatch.setattr(Registrar, "register", slow)
    display = _SavedAtEachRound()
    summary = run_federation(FakeGrid(client_handlers(4)), plan, display=display)
    for rnd, saved in display.saved_when_shown.items():
        assert saved >= rnd - allowed, (rnd, saved, display.saved_when_shown)
    assert display.held, "the round loop never waited for the slow writer"
    assert any("waits for MLflow" in line for line in display.lines)
    assert summary.durability is not None
    assert summary.durability.saved_through == 4
    assert summary.durability.lag_rounds_worst <= allowed
    assert summary.durability.waits == len(display.held)


def test_the_flavour_never_holds_a_checkpoint_back(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports that never get the CPU during the rounds: every round is committed anyway,
    and every version gets its loadable flavour by the end."""
    plan = _plan(raw_config, rounds=3)
    release = threading.Event()
    original = ModelExporter.export
    committed: list[str] = []

    def starved(self: ModelExporter, **kwargs: Any) -> Any:
        release.wait(60)
        return original(self, **kwargs)

    class _Watch(_SavedAtEachRound):
        def on_round(self, outcome: RoundOutcome) -> None:
            super().on_round(outcome)
            run = _client(plan).search_runs(
                [_client(plan).get_experiment_by_name("unit").experiment_id]
            )[0]
            committed.append(run.data.tags.get(CHECKPOINT_TAG, "0"))
            if outcome.round == 3:
                release.set()  # the federation is done: the exporter may run now

    monkeypatch.setattr(ModelExporter, "export", starved)
    display = _Watch()
    run_federation(FakeGrid(client_handlers(4)), plan, display=display)
    assert [int(c) >= r - 1 for r, c in enumerate(committed, start=1)] == [True] * 3
    versions = _client(plan).search_model_versions("name = 'unit'")
    assert sorted(v.tags[FLAVOUR_TAG] for v in versions) == [FlavourState.READY.value] * 3


def test_without_flavour_export_no_child_starts_and_versions_say_skipped(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tracking.export_flavour = false`` (sweeps): versions keep weights and lineage, are
    tagged ``skipped``, and the export process is never started."""
    plan = _plan(raw_config, rounds=2, export_flavour=False)
    started: list[object] = []
    monkeypatch.setattr(ModelExporter, "start", lambda self: started.append(self))
    run_federation(FakeGrid(client_handlers(4)), plan, display=LogProgress(log=lambda _: None))
    assert started == []
    versions = _client(plan).search_model_versions("name = 'unit'")
    assert sorted(v.tags[FLAVOUR_TAG] for v in versions) == [FlavourState.SKIPPED.value] * 2
    files = {
        a.path.rsplit("/", 1)[-1]
        for a in _client(plan).list_artifacts(
            versions[0].run_id, f"models/round-{int(versions[0].tags['federator.round']):04d}"
        )
    }
    assert "weights.safetensors" in files
    assert "MLmodel" not in files
