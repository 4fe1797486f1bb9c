"""Screening updates by size and direction (`federator.strategies.update_rules`): an update
of the right shape that is ×1000 too big, or points the other way, is rejected with the rule
and the numbers; honest spread is not; the rules are configured once and can be turned off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fakes import FakeGrid, instruction, server_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st

from federator import ConfigError
from federator.client.wire import LABEL_KEY, META_KEY
from federator.server.plan import build_plan
from federator.strategies import Guarded, array_specs, screen_replies
from federator.strategies.update_rules import UpdateRules, screen_updates

GLOBAL = ArrayRecord({"w": Array(np.zeros(6, np.float32)), "step": Array(np.zeros(1, np.int64))})
RNG = np.random.default_rng(0)
HONEST = [RNG.normal(size=6).astype(np.float32) for _ in range(5)]


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _reply(node: int, w: np.ndarray, *, label: str | None = None) -> Message:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=node)
    arrays = ArrayRecord({"w": Array(w.astype(np.float32)), "step": Array(np.ones(1, np.int64))})
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": 10}),
            META_KEY: ConfigRecord({LABEL_KEY: label or f"site-{node}"}),
        }
    )
    return Message(content=content, reply_to=ins)


def _screen(updates: list[np.ndarray], rules: UpdateRules) -> tuple[list[str], list[str]]:
    screened = screen_replies(
        [_reply(i + 1, u) for i, u in enumerate(updates)], expected=array_specs(GLOBAL)
    )
    out = screen_updates(screened, GLOBAL, rules)
    return [r.label for r in out.accepted], [r.reason for r in out.rejected]


def test_a_scaled_update_is_rejected_by_default_and_honest_spread_is_not() -> None:
    accepted, reasons = _screen([*HONEST, HONEST[0] * 1000], UpdateRules())
    assert accepted == [f"site-{i}" for i in range(1, 6)]
    (reason,) = reasons
    median = float(np.median([np.linalg.norm(u) for u in [*HONEST, HONEST[0] * 1000]]))
    assert f"the round's median {median:.4g}" in reason
    assert "(max_norm_ratio = 5)" in reason
    assert _screen(HONEST, UpdateRules()) == ([f"site-{i}" for i in range(1, 6)], [])


def test_a_sign_flipped_update_passes_the_norm_rule_but_not_the_direction_rule() -> None:
    base = np.ones(6, np.float32)
    updates = [base + RNG.normal(scale=0.1, size=6) for _ in range(4)] + [-base * 3]
    assert len(_screen(updates, UpdateRules())[0]) == 5  # not bigger than 5× the median
    accepted, reasons = _screen(updates, UpdateRules(min_cosine=0.0))
    assert accepted == ["site-1", "site-2", "site-3", "site-4"]
    assert "points away from the round's median update (cosine -" in reasons[0]


def test_the_absolute_bound_and_turning_rules_off() -> None:
    accepted, reasons = _screen(HONEST, UpdateRules(max_norm_ratio=None, max_norm=1e-3))
    assert accepted == []
    assert all("exceeds the bound max_norm = 0.001" in r for r in reasons)
    off = UpdateRules(max_norm_ratio=None)
    assert not off.active
    assert len(_screen([*HONEST, HONEST[0] * 1000], off)[0]) == 6


def test_the_ratio_needs_three_replies_and_a_nonzero_median() -> None:
    assert len(_screen([HONEST[0], HONEST[0] * 1000], UpdateRules())[0]) == 2
    zeros = [np.zeros(6, np.float32)] * 3 + [HONEST[0]]
    assert len(_screen(zeros, UpdateRules())[0]) == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1.0, 4.0), min_size=3, max_size=8),
    st.floats(1e-3, 1e3),
    st.floats(20, 1e4),
)
def test_the_ratio_rule_depends_on_relative_size_only(
    scales: list[float], unit: float, attack: float
) -> None:
    """Honest updates within 4× of each other are never rejected, whatever the units; an
    update is rejected exactly when it is above 5× the median (numpy's median)."""
    direction = np.ones(6, np.float32) / np.sqrt(6)
    honest = [direction * s * unit for s in scales]
    assert _screen(honest, UpdateRules())[1] == []
    big = direction * attack * max(scales) * unit
    median = float(np.median([np.linalg.norm(u) for u in [*honest, big]]))
    _, reasons = _screen([*honest, big], UpdateRules())
    assert (len(reasons) == 1) == (float(np.linalg.norm(big)) > 5 * median)


def test_guarded_leaves_the_poisoned_update_out_of_the_average() -> None:
    replies = [_reply(i + 1, u) for i, u in enumerate(HONEST)] + [_reply(9, HONEST[0] * 1000)]
    g = Guarded(FedAvg(min_available_nodes=1, min_train_nodes=1), seed=0, rules=UpdateRules())
    g.configure_train(1, GLOBAL, ConfigRecord(), FakeGrid({1: lambda m: None}))
    trained = g.train_round(1, replies)
    assert trained.arrays is not None
    np.testing.assert_allclose(trained.arrays["w"].numpy(), np.mean(HONEST, axis=0), rtol=1e-5)
    assert [r.label for r in trained.screened.rejected] == ["site-9"]


def test_the_screening_section_is_validated_and_defaults_on(raw_config: dict[str, Any]) -> None:
    assert build_plan(raw_config, source="t").screening == UpdateRules(max_norm_ratio=5.0)
    off = {**raw_config, "screening": {"max_norm_ratio": False}}
    assert build_plan(off, source="t").screening.max_norm_ratio is None
    for bad, where in (
        ({"max_norm_ratio": 0.5}, "screening.max_norm_ratio"),
        ({"min_cosine": 2}, "screening.min_cosine"),
        ({"max_norm_ratio": True}, "screening.max_norm_ratio"),
        ({"typo": 1}, "screening.typo"),
    ):
        with pytest.raises(ConfigError, match=where):
            build_plan({**raw_config, "screening": bad}, source="t")
