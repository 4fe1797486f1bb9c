"""The node's roll-out state machine (shadow → canary → promote, or fall back), on its own and
inside the holder with a real store, and the ``--rollout`` option's parsing."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from releases_for_tests import install

from federator import ConfigError
from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.command import rollout_policy
from federator.client.serving.events import read_events
from federator.client.serving.holder import ModelHolder
from federator.client.serving.model import ServedModel
from federator.client.serving.rollout import (
    Event,
    EventKind,
    Rollout,
    RolloutPolicy,
    Stage,
)
from federator.client.store import ModelStore, StoredVersion


def served(version: int) -> ServedModel:
    info = StoredVersion(
        version=version, round=version, federation="f", created_at="", current=False
    )
    return ServedModel(info=info, input_shape=(2,), module=torch.nn.Linear(2, 2))


def test_without_stages_a_new_version_answers_at_once_and_is_watched() -> None:
    r = Rollout(RolloutPolicy(watch_requests=3))
    v1, v2 = served(1), served(2)
    assert r.offer(v1) is None
    assert r.route().answer is v1
    event = r.offer(v2)
    assert event is not None
    assert (event.kind, event.stable, event.candidate) == (EventKind.STARTED, 1, 2)
    assert r.route().answer is v2
    assert r.fallback_for(v2) is v1  # still watched
    for _ in range(2):
        assert r.record(v2, seconds=0.001) is None
    settled = r.record(v2, seconds=0.001)
    assert settled is not None
    assert settled.kind is EventKind.SETTLED
    assert r.fallback_for(v2) is None


def test_a_watched_version_that_fails_falls_back() -> None:
    r = Rollout(RolloutPolicy(watch_requests=10))
    v1, v2 = served(1), served(2)
    r.offer(v1)
    r.offer(v2)
    event = r.record(v2, seconds=0.001, error="RuntimeError: boom")
    assert event is not None
    assert (event.kind, event.stable, event.candidate) == (EventKind.FELL_BACK, 1, 2)
    assert r.route().answer is v1


def test_shadow_then_canary_then_promotion_with_agreement() -> None:
    policy = RolloutPolicy(
        stages=(Stage.SHADOW, Stage.CANARY),
        shadow_requests=4,
        canary_requests=3,
        canary_fraction=0.5,
    )
    r = Rollout(policy, rng=random.Random(1).random)
    v1, v2 = served(1), served(2)
    r.offer(v1)
    r.offer(v2)
    assert r.stage == "shadow"
    route = r.route()
    assert route.answer is v1
    assert route.shadow is v2
    events = [r.record(v2, seconds=0.002, agreed=(a, 2)) for a in (2, 2, 1, 2)]
    stage_event = events[-1]
    assert stage_event is not None
    assert stage_event.kind is EventKind.STAGE
    assert stage_event.stage == "canary"
    assert stage_event.agreement == pytest.approx(7 / 8)
    assert r.stage == "canary"
    answers = [r.route().answer for _ in range(400)]
    assert {a.version for a in answers} == {1, 2}
    assert 0.4 < sum(a is v2 for a in answers) / 400 < 0.6
    assert all(r.route().shadow is None for _ in range(20))
    assert r.record(v2, seconds=0.002) is None
    assert r.record(v1, seconds=0.002) is None  # the stable one's answers do not count
    assert r.record(v2, seconds=0.002) is None
    promoted = r.record(v2, seconds=0.002)
    assert promoted is not None
    assert promoted.kind is EventKind.PROMOTED
    assert r.stable is v2
    assert r.candidate is None


def test_a_canary_that_errs_or_is_slow_falls_back() -> None:
    policy = RolloutPolicy(stages=(Stage.CANARY,), canary_requests=100, max_latency_ms=5)
    r = Rollout(policy)
    v1, v2, v3 = served(1), served(2), served(3)
    r.offer(v1)
    r.offer(v2)
    assert r.fallback_for(v2) is v1
    event = r.record(v2, seconds=0.001, error="RuntimeError: shape")
    assert event is not None
    assert event.kind is EventKind.FELL_BACK
    assert "shape" in event.reason
    assert r.candidate is None
    r.offer(v3)
    slow: list[Event | None] = [r.record(v3, seconds=0.020) for _ in range(10)]
    fell = slow[-1]
    assert fell is not None
    assert fell.kind is EventKind.FELL_BACK
    assert "median latency 20.0 ms" in fell.reason
    assert r.stable is v1


def test_without_fallback_a_failing_canary_stays() -> None:
    r = Rollout(RolloutPolicy(stages=(Stage.CANARY,), fallback=False))
    v1, v2 = served(1), served(2)
    r.offer(v1)
    r.offer(v2)
    assert r.fallback_for(v2) is None
    assert r.record(v2, seconds=0.001, error="boom") is None
    assert r.candidate is v2


@settings(max_examples=80, deadline=None)
@given(
    stages=st.lists(st.sampled_from(list(Stage)), max_size=2, unique=True),
    outcomes=st.lists(st.sampled_from(["ok", "error", "slow"]), max_size=60),
)
def test_only_the_stable_or_the_candidate_ever_answers(
    stages: list[Stage], outcomes: list[str]
) -> None:
    """Whatever happens, someone answers; a version that fell back never answers again."""
    policy = RolloutPolicy(
        stages=tuple(stages), shadow_requests=5, canary_requests=5, max_latency_ms=10
    )
    r = Rollout(policy, rng=random.Random(0).random)
    v1, v2 = served(1), served(2)
    r.offer(v1)
    r.offer(v2)
    fell = False
    for outcome in outcomes:
        route = r.route()
        assert route.answer in (v1, v2)
        assert not (fell and (route.answer is v2 or route.shadow is v2))
        tried = route.shadow or route.answer
        event = r.record(
            tried,
            seconds=0.05 if outcome == "slow" else 0.001,
            error="boom" if outcome == "error" else "",
        )
        fell = fell or (event is not None and event.kind is EventKind.FELL_BACK)
    assert r.stable in (v1, v2)


@pytest.fixture
def store(tmp_path: Path) -> tuple[ModelStore, Ed25519PrivateKey]:
    paths = generate_keys(tmp_path / "keys")
    s = ModelStore.open(tmp_path / "node", pinned_key=paths.public, model="m", keep=3)
    return s, load_private_key(paths.private)


def test_a_fall_back_rolls_the_store_back_and_the_version_is_not_offered_again(
    store: tuple[ModelStore, Ed25519PrivateKey], tmp_path: Path
) -> None:
    s, key = store
    install(s, key, tmp_path, 1)
    reported: list[Event] = []
    holder = ModelHolder(s, policy=RolloutPolicy(stages=(Stage.CANARY,)), report=reported.append)
    holder.refresh()
    install(s, key, tmp_path, 2)
    holder.refresh()
    candidate = holder.rollout.candidate
    assert candidate is not None
    assert candidate.version == 2
    holder.record(candidate, seconds=0.001, error="RuntimeError: boom")
    assert [e.kind for e in reported] == [EventKind.STARTED, EventKind.FELL_BACK]
    assert s.current_version() == 1  # the store follows the fall-back
    holder.refresh()
    assert holder.rollout.candidate is None  # version 2 is not tried again
    batch = np.zeros((1, 64), dtype=np.float32)
    assert holder.route().answer.predict(batch).labels


def test_the_partner_rolling_back_withdraws_the_candidate(
    store: tuple[ModelStore, Ed25519PrivateKey], tmp_path: Path
) -> None:
    s, key = store
    install(s, key, tmp_path, 1)
    reported: list[Event] = []
    holder = ModelHolder(s, policy=RolloutPolicy(stages=(Stage.SHADOW,)), report=reported.append)
    holder.refresh()
    install(s, key, tmp_path, 2)
    holder.refresh()
    s.rollback(to=1)
    holder.refresh()
    assert holder.rollout.candidate is None
    assert reported[-1].kind is EventKind.FELL_BACK
    assert "moved to version 1" in reported[-1].reason


def test_events_are_appended_for_the_node_to_report(tmp_path: Path) -> None:
    from federator.client.serving.events import EventLog

    log = EventLog(tmp_path)
    log.append(Event(EventKind.STARTED, 1, 2, stage="shadow"))
    first, offset = read_events(tmp_path)
    assert [e["kind"] for e in first] == ["started"]
    with log.path.open("ab") as f:
        f.write(b'{"kind": "promo')  # a writer still appending
    assert read_events(tmp_path, after=offset) == ([], offset)
    log.path.write_bytes(log.path.read_bytes() + b'ted"}\n')
    later, _ = read_events(tmp_path, after=offset)
    assert [e["kind"] for e in later] == ["promoted"]


@pytest.mark.parametrize(
    ("text", "stages"),
    [("direct", ()), ("shadow", (Stage.SHADOW,)), ("shadow,canary", (Stage.SHADOW, Stage.CANARY))],
)
def test_rollout_option(text: str, stages: tuple[Stage, ...]) -> None:
    assert rollout_policy(text).stages == stages


@pytest.mark.parametrize(
    ("text", "options", "words"),
    [
        ("blue-green", {}, "blue-green"),
        ("canary", {"canary_fraction": 1.5}, "canary_fraction"),
        ("shadow", {"shadow_requests": 0}, "shadow_requests"),
    ],
)
def test_bad_rollout_options_are_config_errors(
    text: str, options: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        rollout_policy(text, **options)
