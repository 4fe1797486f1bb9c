"""A node proves which provisioned node it is; impostors and doubles take no part.

Real ECDSA P-384 keys in OpenSSH files (as `federator provision` writes them), the real
ClientApp hello handler signing with them, and the real `NodeDirectory` verifying against a
coordinator's ``nodes/`` folder — on an in-process grid. The deployment test with real
SuperNodes is tests/integration/test_node_identity.py.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fakes import FakeGrid, Handler, Recorder, VirtualClock, run_in_process, server_identity
from flwr.app import Context, Message, RecordDict

from federator import ConfigError, FederationFailed
from federator.client import app as client
from federator.client.identity import NONCE_BYTES, hello_statement, proves, sign_hello
from federator.client.mods import refusing
from federator.client.wire import NodeConfigKey
from federator.server.federation.exchange import Exchange
from federator.server.federation.identity import NodeKeys, Refusal, load_node_keys
from federator.server.federation.nodes import NodeDirectory
from federator.server.plan import build_plan

NAMES = ("site-a", "site-b", "site-c")


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _write_pair(folder: Path, name: str) -> Path:
    """``folder/<name>.key`` and ``folder/<name>.pub``, OpenSSH ECDSA P-384."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / f"{name}.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    (folder / f"{name}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private


@pytest.fixture
def kit(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A coordinator's ``nodes/`` folder with three public keys, and each node's private key
    (kept elsewhere, as each partner keeps its own)."""
    nodes, private = tmp_path / "nodes", tmp_path / "private"
    nodes.mkdir()
    private.mkdir()
    keys = {}
    for name in NAMES:
        keys[name] = _write_pair(private, name)
        (private / f"{name}.pub").rename(nodes / f"{name}.pub")
    return nodes, keys


def _node(node_id: int, *, claims: str, key: Path | None, partition: int = 0) -> Handler:
    """A node running the real ClientApp, naming itself ``claims``, signing with ``key``."""
    config: dict[str, Any] = {
        NodeConfigKey.NAME: claims,
        NodeConfigKey.PARTITION_ID: partition,
        NodeConfigKey.NUM_PARTITIONS: 3,
    }
    if key is not None:
        config[NodeConfigKey.IDENTITY_KEY] = str(key)
    ctx = Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})

    def handle(msg: Message) -> Message:
        kind = msg.metadata.message_type
        fn = {"train": client.train, "evaluate": client.evaluate, "query": client.hello}[kind]
        return refusing(msg, ctx, fn)

    return handle


def _directory(grid: FakeGrid, keys: NodeKeys | None) -> NodeDirectory:
    clock = VirtualClock()
    return NodeDirectory(
        grid,
        salt="t",
        keys=keys,
        exchange=Exchange(grid, clock=clock, sleep=clock.sleep),
        clock=clock,
        sleep=clock.sleep,
    )


def _federate(plan: Any, grid: FakeGrid, nodes: Path) -> tuple[NodeDirectory, Recorder]:
    """Run ``plan`` on ``grid`` with the names proven against the keys in ``nodes``."""
    directory, rec = run_in_process(plan, grid, keys=load_node_keys(nodes))
    return directory, rec


def test_a_proof_binds_the_challenge_the_node_id_and_the_name(tmp_path: Path) -> None:
    key = _write_pair(tmp_path, "n")
    public = serialization.load_ssh_public_key((tmp_path / "n.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    nonce = secrets.token_bytes(NONCE_BYTES)
    proof = sign_hello(key, node_id=7, nonce=nonce, label="site-a")
    assert proves(public, proof, node_id=7, nonce=nonce, label="site-a")
    other = secrets.token_bytes(NONCE_BYTES)
    assert not proves(public, proof, node_id=7, nonce=other, label="site-a")  # replayed
    assert not proves(public, proof, node_id=8, nonce=nonce, label="site-a")  # another node
    assert not proves(public, proof, node_id=7, nonce=nonce, label="site-b")  # another name
    assert not proves(public, b"not a signature", node_id=7, nonce=nonce, label="site-a")
    assert hello_statement(node_id=7, nonce=nonce, label="a") != hello_statement(
        node_id=7, nonce=nonce, label="b"
    )


def test_provisioned_nodes_are_admitted_under_the_names_they_prove(
    kit: tuple[Path, dict[str, Path]],
) -> None:
    nodes, keys = kit
    grid = FakeGrid({10 + i: _node(10 + i, claims=n, key=keys[n]) for i, n in enumerate(NAMES)})
    directory = _directory(grid, load_node_keys(nodes))
    directory.wait_for(3, timeout=5)
    assert sorted(e.label for e in directory.admitted_entries()) == list(NAMES)
    assert directory.take_refused() == []
    assert sorted(directory.grid.get_node_ids()) == [10, 11, 12]


def test_a_node_claiming_another_partners_name_is_refused(
    kit: tuple[Path, dict[str, Path]],
) -> None:
    """The issue's attack: site-b's operator says 'site-a' in its kit.json."""
    nodes, keys = kit
    grid = FakeGrid(
        {
            5: _node(5, claims="site-a", key=keys["site-b"]),  # the impostor, first to connect
            6: _node(6, claims="site-a", key=keys["site-a"]),
            7: _node(7, claims="site-c", key=keys["site-c"]),
        }
    )
    directory = _directory(grid, load_node_keys(nodes))
    directory.wait_for(2, timeout=5)
    assert {e.node_id: e.label for e in directory.admitted_entries()} == {6: "site-a", 7: "site-c"}
    assert list(directory.grid.get_node_ids()) == [6, 7]
    [refused] = directory.take_refused()
    assert refused.node_id == 5
    assert refused.refused is not None
    # Named by pseudonyms only: MLflow never learns partner names.
    assert directory.pseudonym("site-b") in refused.refused
    assert "site-a" not in refused.refused
    assert "site-b" not in refused.refused
    assert "holds the node key of" in refused.refused
    assert refused.pseudonym != directory.pseudonym("site-a")  # nothing attributed to site-a
    assert directory.take_refused() == []  # reported once


@pytest.mark.parametrize(
    ("key_name", "refusal"),
    [("stranger", Refusal.UNKNOWN_KEY), (None, Refusal.NO_PROOF)],
)
def test_a_node_without_a_provisioned_key_is_refused(
    kit: tuple[Path, dict[str, Path]], tmp_path: Path, key_name: str | None, refusal: Refusal
) -> None:
    nodes, _keys = kit
    key = _write_pair(tmp_path, key_name) if key_name else None
    grid = FakeGrid({1: _node(1, claims="site-a", key=key)})
    directory = _directory(grid, load_node_keys(nodes))
    directory.refresh()
    assert directory.admitted() == []
    [refused] = directory.take_refused()
    assert refused.refused is not None
    assert refusal.value.split("{")[0].strip() in refused.refused


def test_a_silent_node_is_refused_when_names_must_be_proven(
    kit: tuple[Path, dict[str, Path]],
) -> None:
    nodes, keys = kit
    grid = FakeGrid({1: lambda msg: None, 2: _node(2, claims="site-b", key=keys["site-b"])})
    directory = _directory(grid, load_node_keys(nodes))
    directory.refresh()
    assert directory.admitted() == [2]
    [refused] = directory.take_refused()
    assert refused.refused is not None
    assert "did not answer the hello" in refused.refused


def test_two_nodes_with_one_name_the_second_is_refused_even_without_keys() -> None:
    grid = FakeGrid(
        {
            1: _node(1, claims="site-a", key=None),
            2: _node(2, claims="site-a", key=None, partition=1),
        }
    )
    directory = _directory(grid, None)
    directory.refresh()
    assert directory.admitted() == [1]
    [refused] = directory.take_refused()
    assert refused.refused is not None
    assert "already connected" in refused.refused


def test_waiting_counts_only_admitted_nodes(kit: tuple[Path, dict[str, Path]]) -> None:
    nodes, keys = kit
    grid = FakeGrid(
        {
            1: _node(1, claims="site-a", key=keys["site-a"]),
            2: _node(2, claims="site-a", key=keys["site-b"]),
        }
    )
    directory = _directory(grid, load_node_keys(nodes))
    with pytest.raises(FederationFailed, match=r"only 1 of the 2 nodes .* \(1 refused"):
        directory.wait_for(2, timeout=3)


def test_a_kit_folder_without_keys_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not there"):
        load_node_keys(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no node keys"):
        load_node_keys(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.pub").write_text("ssh-ed25519 AAAA")
    with pytest.raises(ConfigError, match="x.pub"):
        load_node_keys(tmp_path / "bad")


def test_an_impostor_never_trains_and_its_refusal_reaches_the_round(
    kit: tuple[Path, dict[str, Path]], raw_config: dict[str, Any]
) -> None:
    """A whole federation on the in-process grid: the impostor gets no instruction, the
    first round reports its refusal, participants are the two proven nodes."""
    nodes, keys = kit
    raw = copy.deepcopy(raw_config)
    raw["data"]["clients"] = 3
    raw["federation"]["rounds"] = 2
    raw["strategy"] = {"min_available_nodes": 2, "min_train_nodes": 2, "min_evaluate_nodes": 2}
    plan = build_plan(raw, source="test")
    grid = FakeGrid(
        {
            1: _node(1, claims="site-a", key=keys["site-a"], partition=0),
            2: _node(2, claims="site-c", key=keys["site-b"], partition=1),  # impostor
            3: _node(3, claims="site-c", key=keys["site-c"], partition=2),
        }
    )
    directory, rec = _federate(plan, grid, nodes)
    assert rec.started is not None
    assert sorted(e.label for e in rec.started.nodes) == ["site-a", "site-c"]
    to_impostor = {m.metadata.message_type for m in grid.sent if m.metadata.dst_node_id == 2}
    assert to_impostor == {"query"}  # the hello, nothing else
    first, second = rec.rounds
    assert [r.phase for r in first.refusals] == ["identity"]
    assert second.refusals == []
    expected = {directory.pseudonym("site-a"), directory.pseudonym("site-c")}
    for outcome in rec.rounds:
        assert {c.pseudonym for c in outcome.train_clients} == expected


def test_a_reply_naming_another_partner_counts_for_its_sender(
    kit: tuple[Path, dict[str, Path]], raw_config: dict[str, Any]
) -> None:
    """An admitted node that writes another partner's name into its train replies still
    reports under its own, proven name."""
    from federator.client.wire import LABEL_KEY, META_KEY

    nodes, keys = kit
    raw = copy.deepcopy(raw_config)
    raw["data"]["clients"] = 3  # the nodes' partitions 0 and 1 of 3
    raw["federation"]["rounds"] = 1
    raw["strategy"] = {"min_available_nodes": 2}
    plan = build_plan(raw, source="test")
    honest = _node(1, claims="site-a", key=keys["site-a"], partition=0)
    sly = _node(2, claims="site-b", key=keys["site-b"], partition=1)

    def relabelling(msg: Message) -> Message:
        reply = sly(msg)
        kind = msg.metadata.message_type
        if kind != "query" and reply.has_content() and META_KEY in reply.content.config_records:
            reply.content.config_records[META_KEY][LABEL_KEY] = "site-a"
        return reply

    grid = FakeGrid({1: honest, 2: relabelling})
    directory, rec = _federate(plan, grid, nodes)
    [outcome] = rec.rounds
    assert sorted(c.pseudonym for c in outcome.train_clients) == sorted(
        [directory.pseudonym("site-a"), directory.pseudonym("site-b")]
    )
