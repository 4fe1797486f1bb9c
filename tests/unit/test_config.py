"""Federation config validation: a corpus of bad configs, each refused with a clear message."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from federator import ConfigError
from federator.server.plan import (
    build_plan,
    bundled_examples,
    config_hash,
    load_plan,
    read_config_file,
)
from federator.server.plan.overrides import apply_overrides, parse_override


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _drop(raw: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    del node[last]
    return out


# (description, mutation, substrings the error must contain)
BAD: list[tuple[str, Any, list[str]]] = [
    ("missing section", lambda r: _drop(r, "task"), ["task: required key is missing"]),
    (
        "missing rounds",
        lambda r: _drop(r, "federation.rounds"),
        ["federation.rounds: required key is missing"],
    ),
    (
        "typo key",
        lambda r: _set(r, "federation.round", 3),
        ["federation.round: unknown key", "allowed: name, rounds, seed"],
    ),
    ("unknown section", lambda r: _set(r, "extras.x", 1), ["extras: unknown key"]),
    (
        "zero rounds",
        lambda r: _set(r, "federation.rounds", 0),
        ["federation.rounds: Input should be greater than or equal to 1 (got 0)"],
    ),
    ("rounds as text", lambda r: _set(r, "federation.rounds", "many"), ["federation.rounds"]),
    ("bad name", lambda r: _set(r, "federation.name", "has space"), ["federation.name"]),
    ("negative seed", lambda r: _set(r, "federation.seed", -1), ["federation.seed"]),
    ("zero clients", lambda r: _set(r, "data.clients", 0), ["data.clients"]),
    (
        "unknown partitioner",
        lambda r: _set(r, "data.partitioner", "random"),
        ["data.partitioner", "iid", "dirichlet", "shards"],
    ),
    (
        "alpha zero",
        lambda r: _set(_set(r, "data.partitioner", "dirichlet"), "data.alpha", 0),
        ["data.alpha"],
    ),
    (
        "alpha without dirichlet",
        lambda r: _set(r, "data.alpha", 0.3),
        ["data.alpha: applies to partitioner = 'dirichlet' only, not 'iid'"],
    ),
    (
        "shards without shards",
        lambda r: _set(r, "data.shards_per_client", 3),
        ["data.shards_per_client: applies to partitioner = 'shards' only"],
    ),
    ("holdout one", lambda r: _set(r, "data.server_holdout", 1.0), ["data.server_holdout"]),
    (
        "unknown strategy",
        lambda r: _set(r, "strategy.name", "fedsgd"),
        ["strategy.name", "unknown strategy 'fedsgd'", "fedavg"],
    ),
    (
        "unknown strategy param",
        lambda r: _set(r, "strategy.params", {"eta": 0.1}),
        ["strategy.params.eta: unknown key"],
    ),
    (
        "bad fedadam param",
        lambda r: _set(_set(r, "strategy.name", "fedadam"), "strategy.params", {"beta_1": 1.5}),
        ["strategy.params.beta_1"],
    ),
    (
        "trimmed beta too big",
        lambda r: _set(_set(r, "strategy.name", "fedtrimmedavg"), "strategy.params", {"beta": 0.6}),
        ["strategy.params.beta"],
    ),
    (
        "krum bound",
        lambda r: _set(
            _set(r, "strategy.name", "krum"), "strategy.params", {"num_malicious_nodes": 1}
        ),
        ["Krum tolerates f=1", "more than 2f+2=4", "samples 4"],
    ),
    (
        "fraction zero train",
        lambda r: _set(r, "strategy.fraction_train", 0),
        ["strategy.fraction_train"],
    ),
    (
        "min nodes above clients",
        lambda r: _set(r, "strategy.min_train_nodes", 9),
        ["strategy.min_train_nodes: 9 is more than the 4 clients"],
    ),
    (
        "min available above clients",
        lambda r: _set(r, "strategy.min_available_nodes", 5),
        ["strategy.min_available_nodes: 5 is more than the 4 clients"],
    ),
    (
        "min replies above sampled",
        lambda r: _set(r, "strategy.min_replies", 5),
        ["strategy.min_replies: 5 is more than the 4 nodes"],
    ),
    (
        "eval without val data",
        lambda r: _set(r, "data.client_val_fraction", 0.0),
        ["data.client_val_fraction: is 0"],
    ),
    (
        "spread without client eval",
        lambda r: _set(_set(r, "gate.max_client_spread", 0.2), "strategy.fraction_evaluate", 0.0),
        ["gate.max_client_spread: needs ≥ 2 client evaluations"],
    ),
    (
        "accuracy threshold above 1",
        lambda r: _set(r, "gate.threshold", 80),
        ["gate.threshold: accuracy threshold must be within [0, 1]"],
    ),
    ("unknown gate metric", lambda r: _set(r, "gate.metric", "f1"), ["gate.metric"]),
    (
        "momentum with adam",
        lambda r: _set(_set(r, "training.optimizer", "adam"), "training.momentum", 0.9),
        ["training.momentum: applies to optimizer = 'sgd' only"],
    ),
    ("unknown optimizer", lambda r: _set(r, "training.optimizer", "lion"), ["training.optimizer"]),
    ("negative lr", lambda r: _set(r, "training.lr", -0.1), ["training.lr"]),
    (
        "unknown task",
        lambda r: _set(r, "task.name", "resnet"),
        ["task.name", "neither a built-in", "digits-mlp", "mnist-cnn"],
    ),
    (
        "task module missing",
        lambda r: _set(r, "task.name", "no_such_pkg.tasks:task"),
        ["task.name", "cannot import 'no_such_pkg.tasks'"],
    ),
    (
        "bad tracking uri",
        lambda r: _set(r, "tracking.uri", "ftp://example"),
        ["tracking.uri", "is not a tracking URI"],
    ),
    (
        "bad registered model name",
        lambda r: _set(r, "tracking.registered_model", "a/b"),
        ["tracking.registered_model"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in BAD], ids=[d for d, _, _ in BAD]
)
def test_bad_config_is_refused_with_key_path(
    raw_config: dict[str, Any], mutate: Any, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        build_plan(mutate(raw_config), source="fed.toml")
    message = str(info.value)
    assert message.startswith("fed.toml: invalid federation config")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_all_problems_reported_together(raw_config: dict[str, Any]) -> None:
    raw = _set(_set(raw_config, "strategy.min_train_nodes", 9), "gate.threshold", 3)
    with pytest.raises(ConfigError) as info:
        build_plan(raw, source="x")
    message = str(info.value)
    assert "strategy.min_train_nodes" in message
    assert "gate.threshold" in message


def test_minimal_config_gets_sane_defaults(raw_config: dict[str, Any], tmp_path: Path) -> None:
    plan = build_plan(raw_config, source="min")
    assert plan.data.dataset == "digits"  # the task's default dataset
    assert plan.strategy.name == "fedavg"
    assert plan.strategy.sampling.min_available_nodes == 4  # wait for every simulated node
    assert plan.strategy.train_nodes_per_round == 4
    assert plan.tracking.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert plan.tracking.artifact_location == str(tmp_path / "runs" / "artifacts")
    assert plan.tracking.experiment == plan.tracking.registered_model == "unit"
    assert plan.resolved["data"]["dataset"] == "digits"


def test_http_tracking_has_server_side_artifacts(raw_config: dict[str, Any]) -> None:
    plan = build_plan(_set(raw_config, "tracking.uri", "http://127.0.0.1:5000"), source="x")
    assert plan.tracking.artifact_location is None


def test_fedprox_mu_reaches_training_settings(raw_config: dict[str, Any]) -> None:
    raw = _set(
        _set(raw_config, "strategy.name", "fedprox"), "strategy.params", {"proximal_mu": 0.5}
    )
    assert build_plan(raw, source="x").training.proximal_mu == 0.5


def test_config_hash_ignores_tracking_only(raw_config: dict[str, Any]) -> None:
    a = build_plan(raw_config, source="a")
    b = build_plan(_set(raw_config, "tracking.uri", "http://127.0.0.1:1"), source="b")
    c = build_plan(_set(raw_config, "training.lr", 0.01), source="c")
    assert a.config_hash == b.config_hash
    assert a.config_hash != c.config_hash
    assert config_hash(a.resolved) == a.config_hash


def test_overrides_apply_and_are_named_in_errors(raw_config: dict[str, Any]) -> None:
    plan = build_plan(
        raw_config,
        source="x",
        overrides=[
            parse_override("strategy.fraction_train=0.5"),
            parse_override("federation.rounds=7"),
        ],
    )
    assert plan.strategy.sampling.fraction_train == 0.5
    assert plan.rounds == 7
    with pytest.raises(ConfigError, match=r"data\.clients.*\[from --set data\.clients=0\]"):
        build_plan(raw_config, source="x", overrides=[parse_override("data.clients=0")])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a.b=3", 3),
        ("a.b=0.5", 0.5),
        ("a.b=true", True),
        ('a.b="x y"', "x y"),
        ("a.b=plain", "plain"),
        ("a.b=[1, 2]", [1, 2]),
        ("a.b=sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_override_values_are_toml(text: str, value: Any) -> None:
    assert parse_override(text).value == value


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", ".a=1"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override(text)


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.clients is a value, not a section"):
        apply_overrides({"data": {"clients": 3}}, [parse_override("data.clients.x=1")])


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "fed.toml"
    bad.write_text("[federation]\nname = 'x'\nrounds = = 3\n")
    with pytest.raises(ConfigError, match=r"fed\.toml: not valid TOML: .*line 3"):
        read_config_file(bad)


def test_missing_file_lists_bundled_examples(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file \(bundled examples: .*demo"):
        load_plan(tmp_path / "nope.toml")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_plan(tmp_path)


@pytest.mark.parametrize("name", ["demo", "mnist-cnn", "mnist-dp", "digits-robust"])
def test_bundled_examples_are_valid(name: str) -> None:
    assert name in bundled_examples()
    plan = load_plan(name)
    assert plan.rounds >= 1
    assert plan.source.endswith(f"{name}.toml")


def test_flat_params_cover_every_key(raw_config: dict[str, Any]) -> None:
    params = build_plan(raw_config, source="x").flat_params()
    assert params["federation.rounds"] == "2"
    assert params["task.name"] == "digits-mlp"
    assert params["strategy.name"] == "fedavg"
    assert "gate.max_client_spread" in params
