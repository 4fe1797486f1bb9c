"""The ``[attack]`` suite: its maps, the attackers' choice, the adversary, config refusals."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import (
    FakeGrid,
    client_handlers,
    instruction,
    run_in_process,
    server_identity,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federator import ConfigError
from federator.client.node import NodeConfig, SimulatedNodes
from federator.client.wire import LABEL_KEY, META_KEY
from federator.server.deploy.submit import SUBMITTED_KEY, encode_config, submitted_config
from federator.server.federation.app import _plan_from
from federator.server.plan import FederationPlan, build_plan, for_deployment
from federator.server.tracking._records import (
    ATTACKERS_IN_MODEL_TAG,
    ATTACKERS_TAG,
    attack_tags,
    attack_version_tags,
    outcome_from_record,
    outcome_record,
    round_metrics,
)
from federator.simulations.attacks import (
    AttackKind,
    LabelFlip,
    alie_z,
    choose_attackers,
    flip_labels,
    poison,
)
from federator.simulations.attacks.adversary import Adversary
from federator.simulations.datasets import ArrayData
from federator.simulations.partition import ClientData
from federator.simulations.runner import label_flip, simulated_nodes

FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=64)
VECTORS = arrays(np.float64, st.integers(1, 40), elements=FINITE)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def plan_with(raw: dict[str, Any], attack: dict[str, Any], **data: Any) -> FederationPlan:
    raw = copy.deepcopy(raw)
    raw["attack"] = attack
    raw["data"] = {**raw["data"], **data}
    return build_plan(raw, source="test")


# -- the maps ----------------------------------------------------------------------------


@given(VECTORS)
def test_sign_flip_sends_minus_the_update(u: np.ndarray) -> None:
    assert np.array_equal(poison.sign_flip(u), -u)


@given(VECTORS, st.floats(0.01, 1e3))
def test_scaling_sends_k_times_the_update(u: np.ndarray, k: float) -> None:
    np.testing.assert_allclose(poison.scaled(u, k), k * u, rtol=1e-12, atol=0)


@given(
    arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(1, 20)), elements=FINITE),
    st.floats(0.01, 5),
)
def test_a_little_is_enough_stays_within_z_standard_deviations_of_the_mean(
    honest: np.ndarray, z: float
) -> None:
    sent = poison.little_is_enough(honest, z)
    mean, std = honest.mean(axis=0), honest.std(axis=0)
    slack = 1e-9 * (1 + np.abs(mean) + z * std)
    assert np.all(sent >= mean - z * std - slack)
    assert np.all(sent <= mean + z * std + slack)
    np.testing.assert_allclose(sent, mean - z * std, rtol=1e-9, atol=1e-9)


def test_gaussian_noise_has_the_asked_spread_and_ignores_the_update() -> None:
    noise = poison.gaussian(20_000, 0.5, np.random.default_rng(0))
    assert abs(float(noise.std()) - 0.5) < 0.02
    assert abs(float(noise.mean())) < 0.02


def test_baruch_z_max_for_the_papers_setting_and_ours() -> None:
    # n = 50, f = 12 (Baruch et al.'s CIFAR setting): s = 26 - 12 = 14, z = Φ⁻¹(36/50).
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-3)  # s = 4: Φ⁻¹(0.6)
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)  # no shift left at all


@given(st.integers(0, 255).map(lambda c: c * 2 + 2), st.data())
def test_label_flip_is_an_involution_that_moves_every_label(classes: int, data: Any) -> None:
    y = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=1)), dtype=np.int64)
    flipped = flip_labels(y, classes)
    assert np.array_equal(flip_labels(flipped, classes), y)
    assert np.all(flipped != y)  # an even number of classes has no fixed point
    assert np.all((flipped >= 0) & (flipped < classes))


def test_label_flip_refuses_labels_outside_its_classes() -> None:
    with pytest.raises(ValueError, match=r"0\.\.9"):
        flip_labels(np.array([3, 10]), 10)


# -- who attacks -------------------------------------------------------------------------


@settings(max_examples=50)
@given(st.integers(3, 200), st.integers(0, 2**32 - 1), st.data())
def test_attackers_are_distinct_partitions_drawn_reproducibly(
    clients: int, seed: int, data: Any
) -> None:
    count = data.draw(st.integers(1, (clients - 1) // 2))
    chosen = choose_attackers(clients, count, seed)
    assert chosen == choose_attackers(clients, count, seed)
    assert len(set(chosen)) == count
    assert list(chosen) == sorted(chosen)
    assert all(0 <= p < clients for p in chosen)


def test_other_seeds_choose_other_attackers() -> None:
    assert len({choose_attackers(100, 10, seed) for seed in range(20)}) > 15


def test_the_plan_resolves_attackers_and_defaults(raw_config: dict[str, Any]) -> None:
    plan = plan_with(raw_config, {"kind": "little-is-enough", "fraction": 0.2}, clients=10)
    assert plan.attack is not None
    assert plan.attack.attackers == choose_attackers(10, 2, seed=1)  # the federation seed
    assert plan.attack.z == pytest.approx(alie_z(10, 2))
    assert plan.attack.labels == tuple(f"partition-{p}" for p in plan.attack.attackers)
    scale = plan_with(raw_config, {"kind": "scale", "count": 1, "seed": 9}).attack
    assert scale is not None
    assert (scale.scale, scale.sigma, scale.z) == (10.0, None, None)
    assert scale.attackers == choose_attackers(4, 1, seed=9)
    assert plan_with(raw_config, {"kind": "gaussian", "count": 1}).attack.sigma == 1.0  # type: ignore[union-attr]


def test_the_resolved_config_carries_the_values_the_attack_uses(
    raw_config: dict[str, Any],
) -> None:
    plan = plan_with(raw_config, {"kind": "little-is-enough", "fraction": 0.2}, clients=10)
    assert plan.attack is not None
    resolved = plan.resolved["attack"]
    assert resolved == {"kind": "little-is-enough", "fraction": 0.2, "z": plan.attack.z, "seed": 1}
    assert plan.flat_params()["attack.kind"] == "little-is-enough"
    again = plan_with(raw_config, resolved, clients=10)  # the resolved section is a valid one
    assert again.attack == plan.attack
    assert again.config_hash == plan.config_hash


def test_a_config_without_an_attack_hashes_as_before(raw_config: dict[str, Any]) -> None:
    plan = build_plan(raw_config, source="test")
    assert plan.attack is None
    assert "attack" not in plan.resolved
    assert not any(k.startswith("attack") for k in plan.flat_params())


BAD: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"kind": "scale"}, {}, "attack: give either fraction (of the clients) or count"),
    ({"kind": "scale", "count": 1, "fraction": 0.2}, {}, "not both"),
    ({"kind": "scale", "fraction": 0.5}, {}, "attack.fraction: Input should be less than 0.5"),
    ({"kind": "scale", "fraction": 0.1}, {}, "attack.fraction: 0.1 of 4 clients is no attacker"),
    ({"kind": "scale", "count": 2}, {}, "attack.count: 2 attackers of 4 clients is not a minority"),
    ({"kind": "scale", "count": 1, "sigma": 2}, {}, "attack.sigma: applies to kind = 'gaussian'"),
    ({"kind": "sign-flip", "count": 1, "scale": 3}, {}, "attack.scale: applies to kind = 'scale'"),
    (
        {"kind": "gaussian", "count": 1, "z": 1},
        {},
        "attack.z: applies to kind = 'little-is-enough'",
    ),
    (
        {"kind": "scale", "count": 1, "scale": -1},
        {},
        "attack.scale: Input should be greater than 0",
    ),
    ({"kind": "boom", "count": 1}, {}, "attack.kind: Input should be 'sign-flip'"),
    ({"kind": "scale", "count": 1, "who": 3}, {}, "attack.who: unknown key"),
    (
        {"kind": "little-is-enough", "count": 1},
        {"clients": 10},
        "attack.z: Baruch et al.'s z_max for n = 10 clients per round and f = 1 attackers is 0",
    ),
]


@pytest.mark.parametrize(("attack", "data", "message"), BAD)
def test_bad_attack_sections_are_refused_with_the_key(
    raw_config: dict[str, Any], attack: dict[str, Any], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        plan_with(raw_config, attack, **data)
    assert message in str(err.value)


def test_model_poisoning_is_refused_under_secagg(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["data"]["clients"] = 6
    raw["strategy"] = {"min_train_nodes": 6}
    raw["privacy"] = {"secagg": {"num_shares": 3, "reconstruction_threshold": 2}}
    with pytest.raises(ConfigError, match="attack.kind: 'sign-flip' poisons updates"):
        plan_with(raw, {"kind": "sign-flip", "count": 1})
    assert plan_with(raw, {"kind": "label-flip", "count": 1}).attack is not None


# -- simulation only ---------------------------------------------------------------------

ATTACKED = """
[federation]
name = "attacked"
rounds = 2
[task]
name = "digits-mlp"
[data]
clients = 4
[attack]
kind = "sign-flip"
count = 1
"""


def test_every_deployment_path_refuses_an_attack(tmp_path: Path) -> None:
    path = tmp_path / "fed.toml"
    path.write_text(ATTACKED)
    with pytest.raises(ConfigError, match=r"attack: the \[attack\] section .* refused outside"):
        submitted_config(path)  # federator run and federator bundle
    raw = {"federation": {"name": "attacked", "rounds": 2}, "task": {"name": "digits-mlp"}}
    raw |= {"data": {"clients": 4}, "attack": {"kind": "sign-flip", "count": 1}}
    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={SUBMITTED_KEY: encode_config(raw)},
    )
    with pytest.raises(ConfigError, match="refused outside `federator simulate`"):
        _plan_from(ctx)  # the ServerApp `flwr run` starts, from a submitted config
    named = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"federation-config": str(path)},
    )
    with pytest.raises(ConfigError, match="refused outside"):
        _plan_from(named)  # ... and from a config it names
    plan = build_plan(raw, source="sim")
    assert plan.attack is not None  # federator simulate takes it
    assert for_deployment(build_plan({**raw, "attack": None}, source="x")).attack is None


# -- the adversary -----------------------------------------------------------------------

GLOBAL = ArrayRecord(
    {"w": Array(np.zeros((2, 3), np.float32)), "steps": Array(np.array([7], np.int64))}
)


def reply(node: int, label: str, w: np.ndarray) -> Message:
    ins = instruction(RecordDict({"config": ConfigRecord()}), node_id=node)
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {"w": Array(w.astype(np.float32)), "steps": Array(np.array([7], np.int64))}
            ),
            "metrics": MetricRecord({"num-examples": 10}),
            META_KEY: ConfigRecord({LABEL_KEY: label}),
        }
    )
    return Message(content=content, reply_to=ins)


def weights(msg: Message) -> np.ndarray:
    return msg.content.array_records["arrays"]["w"].numpy()


def honest_round() -> list[Message]:
    return [reply(i + 1, f"partition-{i}", np.full((2, 3), i + 1.0)) for i in range(4)]


def test_the_adversary_rewrites_only_the_attackers_updates(raw_config: dict[str, Any]) -> None:
    plan = plan_with(raw_config, {"kind": "scale", "count": 1, "scale": 3})
    assert plan.attack is not None
    (attacker,) = plan.attack.attackers
    replies = honest_round()
    adversary = Adversary(plan.attack)
    assert adversary.attackers_in(replies) == (f"partition-{attacker}",)
    adversary.poison(1, GLOBAL, replies)
    for i, msg in enumerate(replies):
        expected = 3 * (i + 1.0) if i == attacker else i + 1.0
        assert np.allclose(weights(msg), expected)
        assert weights(msg).dtype == np.float32
        assert msg.content.array_records["arrays"]["steps"].numpy().tolist() == [7]


def test_a_little_is_enough_uses_every_honest_update_of_the_round(
    raw_config: dict[str, Any],
) -> None:
    plan = plan_with(raw_config, {"kind": "little-is-enough", "count": 1, "z": 1.0})
    assert plan.attack is not None
    (attacker,) = plan.attack.attackers
    replies = Adversary(plan.attack).poison(1, GLOBAL, honest_round())
    values = np.arange(1.0, 5.0)
    assert np.allclose(weights(replies[attacker]), values.mean() - values.std())


def test_gaussian_noise_is_the_same_on_every_run(raw_config: dict[str, Any]) -> None:
    plan = plan_with(raw_config, {"kind": "gaussian", "count": 1, "sigma": 0.5})
    assert plan.attack is not None
    (attacker,) = plan.attack.attackers
    first = weights(Adversary(plan.attack).poison(2, GLOBAL, honest_round())[attacker])
    again = weights(Adversary(plan.attack).poison(2, GLOBAL, honest_round())[attacker])
    other = weights(Adversary(plan.attack).poison(3, GLOBAL, honest_round())[attacker])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.allclose(first, attacker + 1.0)


def test_label_flipping_leaves_the_replies_alone(raw_config: dict[str, Any]) -> None:
    plan = plan_with(raw_config, {"kind": "label-flip", "count": 1})
    assert plan.attack is not None
    replies = Adversary(plan.attack).poison(1, GLOBAL, honest_round())
    assert [float(weights(m)[0, 0]) for m in replies] == [1.0, 2.0, 3.0, 4.0]


def test_only_label_flip_attacker_nodes_train_on_flipped_labels(
    raw_config: dict[str, Any],
) -> None:
    plan = plan_with(raw_config, {"kind": "label-flip", "count": 1})
    assert plan.attack is not None
    flip = label_flip(plan)
    assert flip == LabelFlip(partitions=frozenset(plan.attack.attackers), num_classes=10)
    nodes = simulated_nodes(plan)
    assert nodes.label_flip == flip
    data = ClientData(
        train=ArrayData(np.zeros((3, 64), np.float32), np.array([0, 4, 9])),
        val=ArrayData(np.zeros((1, 64), np.float32), np.array([2])),
    )
    (attacker,) = plan.attack.attackers
    flipped = nodes.training_data(NodeConfig(partition_id=attacker), data)
    assert flipped.train.y.tolist() == [9, 5, 0]
    assert flipped.val.y.tolist() == [2]
    honest = nodes.training_data(NodeConfig(partition_id=(attacker + 1) % 4), data)
    assert honest is data
    assert SimulatedNodes().training_data(NodeConfig(partition_id=attacker), data) is data
    assert label_flip(plan_with(raw_config, {"kind": "scale", "count": 1})) is None


# -- the round loop and what it records ------------------------------------------------


def _federate(plan: FederationPlan) -> list[Any]:
    """Every round of ``plan`` on real ClientApp handlers, in process (as in test_rounds)."""
    _, rec = run_in_process(plan, FakeGrid(client_handlers(4)))
    return list(rec.rounds)


def test_screening_refuses_scaled_attackers_and_the_round_says_so(
    raw_config: dict[str, Any],
) -> None:
    raw = copy.deepcopy(raw_config)
    raw["strategy"] = {"fraction_evaluate": 0.0}
    raw["federation"]["rounds"] = 3
    raw["training"] = {"epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9}
    plan = plan_with(raw, {"kind": "scale", "count": 1, "scale": 50})
    assert plan.attack is not None
    rounds = _federate(plan)
    (label,) = plan.attack.labels
    for o in rounds:
        assert tuple(o.attackers) == (label,)
        assert tuple(o.attackers_accepted) == ()  # 50× the median norm: screened out
        assert any("update norm" in r.reason for r in o.refusals)
        metrics = round_metrics(o)
        assert (metrics["attack/attackers"], metrics["attack/accepted"]) == (1, 0)
        assert outcome_from_record(outcome_record(o, version="1")).attackers == (label,)
        assert json.loads(attack_version_tags(plan, o)[ATTACKERS_IN_MODEL_TAG]) == []
    assert json.loads(attack_tags(plan)[ATTACKERS_TAG]) == [label]
    raw["screening"] = {"max_norm_ratio": False}
    unscreened = _federate(plan_with(raw, {"kind": "scale", "count": 1, "scale": 50}))
    assert all(tuple(o.attackers_accepted) == (label,) for o in unscreened)
    assert unscreened[-1].server_eval.accuracy < rounds[-1].server_eval.accuracy - 0.2


def test_a_plan_without_an_attack_records_nothing_about_one(raw_config: dict[str, Any]) -> None:
    plan = build_plan(raw_config, source="test")
    assert attack_tags(plan) == {}
    assert AttackKind.LABEL_FLIP.poisons_updates is False
    assert all(k.poisons_updates for k in AttackKind if k is not AttackKind.LABEL_FLIP)
