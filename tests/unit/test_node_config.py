"""A node's settings: read once into a typed `NodeConfig`; simulated nodes get theirs from
the ClientApp they run, never from environment variables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import client_context, instruction, server_identity
from flwr.app import Context, Message, RecordDict
from ray import cloudpickle

from federator import ConfigError, FederatorError
from federator.client.app import build_client_app
from federator.client.keys import generate_keys, load_private_key
from federator.client.node import SimulatedNodes, node_config, parse_node_config
from federator.client.tasks import DIGITS_MLP
from federator.client.weights import model_arrays, save_safetensors
from federator.client.wire import INSTALLED_KEY, META_KEY, RELEASE_ACTION, RELEASE_KEY
from federator.privacy import Accountant, PrivacyLedger
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import build_plan
from federator.server.releases import ReleaseSigner, release_content
from federator.simulations.runner import simulated_nodes


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def test_a_full_node_config_is_read_into_one_typed_record(tmp_path: Path) -> None:
    node = parse_node_config(
        {
            "name": "hospital-a",
            "data": str(tmp_path / "train.npz"),
            "policy": str(tmp_path / "policy.toml"),
            "store": str(tmp_path / "models"),
            "pinned-key": "release.pub",
            "model": 7,  # Flower parses `model=7` as a number; it is a name all the same
            "keep": "5",
            "privacy-ledger": str(tmp_path / "ledger.json"),
            "max-epsilon": 8,
            "privacy-delta": "1e-6",
            "privacy-accountant": "prv",
            "dp-noise-seed": 3,
            "some-other-key": "left alone",
        }
    )
    assert node.label == "hospital-a"
    assert node.data == tmp_path / "train.npz"
    assert node.policy == tmp_path / "policy.toml"
    assert node.store == tmp_path / "models"
    assert node.pinned_key == Path("release.pub")
    assert node.model == "7"
    assert node.keep == 5
    assert node.privacy_ledger == tmp_path / "ledger.json"
    assert node.max_epsilon == 8.0
    assert node.privacy_delta == 1e-6
    assert node.privacy_accountant is Accountant.PRV
    assert node.dp_noise_seed == 3


def test_defaults_and_blank_values_leave_settings_unset() -> None:
    node = parse_node_config({"partition-id": 2, "num-partitions": 4, "store": "", "model": ""})
    assert node.label == "partition-2"
    assert node.num_partitions == 4
    assert (node.store, node.model, node.pinned_key, node.privacy_ledger) == (None,) * 4
    assert (node.keep, node.privacy_delta, node.privacy_accountant) == (3, 1e-5, Accountant.RDP)
    assert node.max_epsilon is None
    assert node.dp_noise_seed is None
    with pytest.raises(FederatorError, match="neither a 'name' nor a 'partition-id'"):
        _ = parse_node_config({}).label


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition-id", "first"),
        ("partition-id", -1),
        ("num-partitions", 0),
        ("keep", 0),
        ("keep", "three"),
        ("max-epsilon", "lots"),
        ("max-epsilon", 0),
        ("privacy-delta", 1.5),
        ("privacy-accountant", "gdp"),
        ("dp-noise-seed", 0.5),
    ],
)
def test_a_bad_value_is_a_config_error_naming_key_and_value(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config({"name": "n", key: value})
    assert f"{key}={value!r}" in str(info.value)


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config({"keep": "x", "max-epsilon": -1})
    assert "keep='x'" in str(info.value)
    assert "max-epsilon=-1" in str(info.value)


def _context(node_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_simulated_nodes_each_get_their_own_folders_and_their_config_wins(
    tmp_path: Path,
) -> None:
    sim = SimulatedNodes(
        store_root=tmp_path / "stores",
        pinned_key=tmp_path / "release.pub",
        model="digits",
        keep=4,
        ledger_root=tmp_path / "ledgers",
        max_epsilon=2.0,
        privacy_delta=1e-4,
        dp_noise_seed=9,
    )
    node = node_config(client_context(3, 4, 7), simulated=sim)
    assert node.store == tmp_path / "stores" / "partition-3"
    assert node.privacy_ledger == tmp_path / "ledgers" / "partition-3.json"
    assert (node.pinned_key, node.model, node.keep) == (tmp_path / "release.pub", "digits", 4)
    assert (node.max_epsilon, node.privacy_delta, node.dp_noise_seed) == (2.0, 1e-4, 9)
    own = _context({"partition-id": 1, "store": "/mine", "privacy-ledger": "/l", "keep": 2})
    mine = node_config(own, simulated=sim)
    assert (mine.store, mine.privacy_ledger, mine.keep) == (Path("/mine"), Path("/l"), 2)
    assert node_config(client_context(3, 4, 7)).store is None  # deployment: nothing added


def test_simulated_nodes_of_a_plan(raw_config: dict[str, Any]) -> None:
    plan = build_plan(raw_config, source="test")
    nodes = simulated_nodes(plan)
    assert nodes.ledger_root == plan.tracking.runs_dir / "nodes" / "privacy-ledgers"
    assert nodes.store_root is None  # no [release]: nothing to install
    assert nodes.pinned_key is None


def _signed_release(tmp_path: Path) -> tuple[Path, RecordDict]:
    keys = generate_keys(tmp_path / "keys")
    folder = tmp_path / "release"
    folder.mkdir()
    save_safetensors(model_arrays(DIGITS_MLP.build_model()), folder / "weights.safetensors")
    (folder / "lineage.json").write_text('{"round": 1}')
    release = ReleaseSigner(load_private_key(keys.private)).sign(
        model="digits",
        version=1,
        previous_version=None,
        round=1,
        federation="unit",
        run_id="run-1",
        task="digits-mlp",
        reasons=["ok"],
        metrics={"accuracy": 0.9},
        folder=folder,
    )
    return keys.public, release_content(release)


def test_a_simulated_app_hands_its_nodes_their_settings_without_environment_variables(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    assert not [k for k in os.environ if k.startswith("FEDERATOR_NODE_")]
    pinned, release = _signed_release(tmp_path)
    sim = SimulatedNodes(
        store_root=tmp_path / "stores",
        pinned_key=pinned,
        model="digits",
        ledger_root=tmp_path / "ledgers",
        max_epsilon=100.0,
    )
    # The app travels to Ray's workers pickled by Ray's cloudpickle, as Flower ships it.
    app = cloudpickle.loads(cloudpickle.dumps(build_client_app(simulated=sim)))
    ctx = client_context(1, 4, 11)

    def send(content: RecordDict, kind: str) -> Message:
        reply = app(instruction(content, node_id=11, kind=kind), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return reply

    installed = send(release, f"query.{RELEASE_ACTION}")
    assert installed.content[RELEASE_KEY]["status"] == "installed"
    assert (tmp_path / "stores" / "partition-1" / "current").is_symlink()
    assert send(RecordDict(), "query").content[META_KEY][INSTALLED_KEY] == 1

    raw = dict(raw_config) | {"privacy": {"local": {"target_epsilon": 4.0, "delta": 1e-5}}}
    plan = build_plan(raw, source="test")
    cfg = instructions_for(plan, run_id="run-1").to_config()
    cfg["server-round"] = 1
    send(RecordDict({"arrays": initial_arrays(plan.task(), 0), "config": cfg}), "train")
    entries = PrivacyLedger(tmp_path / "ledgers" / "partition-1.json").entries()
    assert [(e.run, e.round) for e in entries] == [("run-1", 1)]
