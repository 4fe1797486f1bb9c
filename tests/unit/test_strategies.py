"""The registry, the strategy specs and the Flower strategies they build."""

from __future__ import annotations

import pytest
from flwr.serverapp import strategy as fl
from pydantic import ValidationError

from federator import RegistryError
from federator.strategies import STRATEGIES, Registry, Sampling

SAMPLING = Sampling(
    fraction_train=0.5,
    fraction_evaluate=0.25,
    min_train_nodes=3,
    min_evaluate_nodes=2,
    min_available_nodes=6,
)

EXPECTED = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "krum": fl.Krum,
    "multikrum": fl.MultiKrum,
    "fedtrimmedavg": fl.FedTrimmedAvg,
    "fedmedian": fl.FedMedian,
    "bulyan": fl.Bulyan,
}


def test_registry_rejects_duplicates_and_lists_known_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("One", 1)
    with pytest.raises(RegistryError, match="widget 'one' is already registered"):
        reg.register("one", 2)
    assert reg.get("ONE") == 1
    with pytest.raises(RegistryError, match="unknown widget 'two'; known: one"):
        reg.get("two")
    with pytest.raises(RegistryError, match="non-empty name"):
        reg.register("  ", 3)
    assert "one" in reg
    assert list(reg) == ["one"]
    assert len(reg) == 1


def test_builtin_strategies_cannot_be_replaced() -> None:
    with pytest.raises(RegistryError):
        STRATEGIES.register("fedavg", STRATEGIES.get("fedprox"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_strategy_builds_the_flower_class_with_sampling(name: str) -> None:
    spec = STRATEGIES.get(name)
    strategy = spec.build(SAMPLING, spec.parse_params({}))
    assert type(strategy) is EXPECTED[name]
    assert strategy.fraction_train == 0.5  # type: ignore[attr-defined]
    assert strategy.min_train_nodes == 3  # type: ignore[attr-defined]
    assert strategy.min_available_nodes == 6  # type: ignore[attr-defined]
    assert "20" in spec.paper or "NeurIPS" in spec.paper  # cites a paper with its year


def test_registry_covers_exactly_the_issue_list() -> None:
    assert set(STRATEGIES.names()) == set(EXPECTED)


def test_parameters_reach_the_strategy() -> None:
    spec = STRATEGIES.get("fedadam")
    s = spec.build(SAMPLING, spec.parse_params({"eta": 0.3, "tau": 0.01}))
    assert (s.eta, s.tau) == (0.3, 0.01)  # type: ignore[attr-defined]
    spec = STRATEGIES.get("multikrum")
    s = spec.build(
        SAMPLING, spec.parse_params({"num_malicious_nodes": 1, "num_nodes_to_select": 3})
    )
    assert (s.num_malicious_nodes, s.num_nodes_to_select) == (1, 3)  # type: ignore[attr-defined]


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(ValidationError):
        STRATEGIES.get("fedavg").parse_params({"eta": 1})


def test_robust_strategies_are_marked() -> None:
    robust = {n for n in STRATEGIES if STRATEGIES.get(n).needs_individual_updates}
    assert robust == {"krum", "multikrum", "fedtrimmedavg", "fedmedian", "bulyan"}


@pytest.mark.parametrize(
    ("f", "n", "ok"), [(0, 3, True), (1, 4, False), (1, 5, True), (2, 6, False), (2, 7, True)]
)
def test_krum_bound_is_2f_plus_2(f: int, n: int, ok: bool) -> None:
    spec = STRATEGIES.get("krum")
    problems = spec.problems(spec.parse_params({"num_malicious_nodes": f}), train_nodes=n)
    assert (problems == []) is ok


@pytest.mark.parametrize(
    ("f", "n", "ok"), [(0, 3, True), (0, 2, False), (1, 6, False), (1, 7, True)]
)
def test_bulyan_bound_is_4f_plus_3(f: int, n: int, ok: bool) -> None:
    spec = STRATEGIES.get("bulyan")
    problems = spec.problems(spec.parse_params({"num_malicious_nodes": f}), train_nodes=n)
    assert (problems == []) is ok
