"""Loading a deployment kit: what a coordinator or node gets back, and every refusal.

Kits come from `federator provision` at a fixed time T0 with 30-day certificates; the loaders
get an injected clock, so expiry is tested without waiting.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from provisioning import NODES, T0, clock_at, later, make_kits, spec

from federator import ConfigError
from federator.client.keys import key_id, load_public_key
from federator.client.kit import load_node_kit
from federator.server.deploy.kits import load_coordinator_kit
from federator.server.deploy.provision import ProvisionReport, provision


@pytest.fixture
def kits(tmp_path: Path) -> ProvisionReport:
    return make_kits(tmp_path / "kits")


def test_loaded_kits_point_at_the_files(kits: ProvisionReport) -> None:
    clock = lambda: later(1)  # noqa: E731
    node = load_node_kit(kits.out / "nodes/clinic-3", federation="acme-study", clock=clock)
    assert (node.node, node.federation, node.coordinator) == (
        "clinic-3",
        "acme-study",
        "coord.example.org:9092",
    )
    assert node.node_key == kits.out / "nodes/clinic-3/node.key"
    assert node.ca_cert.read_bytes() == (kits.out / "ca/ca.crt").read_bytes()
    assert key_id(load_public_key(node.release_pub)) == kits.release_key_id
    assert node.ca_fingerprint == kits.ca_fingerprint
    coord = load_coordinator_kit(kits.out / "coordinator", federation="acme-study", clock=clock)
    assert (coord.host, coord.port) == ("coord.example.org", 9092)
    assert [k.name for k in coord.nodes] == list(NODES)
    assert coord.nodes[2].public_key.read_bytes() == node.node_pub.read_bytes()
    assert coord.server_key.name == "server.key"
    assert coord.not_after == T0 + timedelta(days=30)
    assert "127.0.0.1" in coord.server_names


# --------------------------------------------------------------------------------------------
# Refusals while loading


def test_kit_of_another_federation_is_refused(kits: ProvisionReport) -> None:
    with pytest.raises(ConfigError, match="belongs to federation 'acme-study', not 'other'"):
        load_node_kit(kits.out / "nodes/hospital-a", federation="other")
    with pytest.raises(ConfigError, match="kit of another federation"):
        load_coordinator_kit(kits.out / "coordinator", federation="other")


def test_wrong_kind_of_kit_is_refused(kits: ProvisionReport) -> None:
    with pytest.raises(ConfigError, match="coordinator kit, not a node kit"):
        load_node_kit(kits.out / "coordinator")
    with pytest.raises(ConfigError, match="node kit, not a coordinator kit"):
        load_coordinator_kit(kits.out / "nodes/hospital-a")
    with pytest.raises(ConfigError, match="kit.json: missing"):
        load_node_kit(kits.out)


@pytest.mark.parametrize(
    ("days", "problem"), [(31, "expired on 2026-03-31"), (-1, "not valid before")]
)
def test_certificates_outside_their_validity_are_refused(
    kits: ProvisionReport, days: float, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_coordinator_kit(kits.out / "coordinator", clock=lambda: later(days))
    with pytest.raises(ConfigError, match=problem):
        load_node_kit(kits.out / "nodes/hospital-a", clock=lambda: later(days))


def test_last_day_of_validity_is_accepted(kits: ProvisionReport) -> None:
    load_coordinator_kit(kits.out / "coordinator", clock=lambda: later(29.9))


def test_certificate_from_another_ca_is_refused(kits: ProvisionReport, tmp_path: Path) -> None:
    other = provision(spec(), out=tmp_path / "other", clock=lambda: clock_at(T0))
    coord = kits.out / "coordinator"
    for name in ("server.crt", "server.key"):
        shutil.copy2(other.out / "coordinator" / name, coord / name)
    with pytest.raises(ConfigError, match=r"server\.crt: certificate was not issued by"):
        load_coordinator_kit(coord, clock=lambda: later(1))
    node = kits.out / "nodes/hospital-b"
    shutil.copy2(other.out / "nodes/hospital-b/ca.crt", node / "ca.crt")
    with pytest.raises(ConfigError, match=r"ca\.crt: not this federation's CA"):
        load_node_kit(node, clock=lambda: later(1))


@pytest.mark.parametrize(
    ("kit", "key", "mode"),
    [
        ("nodes/hospital-a", "node.key", 0o640),
        ("coordinator", "server.key", 0o644),
        ("coordinator", "release.key", 0o602),
    ],
)
def test_loose_permissions_on_a_private_key_are_refused(
    kits: ProvisionReport, kit: str, key: str, mode: int
) -> None:
    path = kits.out / kit / key
    os.chmod(path, mode)
    load = load_node_kit if kit.startswith("nodes") else load_coordinator_kit
    with pytest.raises(ConfigError, match=f"{key}: private key is accessible .*chmod 600"):
        load(kits.out / kit, clock=lambda: later(1))


@pytest.mark.parametrize(
    ("kit", "name"),
    [
        ("nodes/hospital-a", "ca.crt"),
        ("nodes/hospital-a", "node.key"),
        ("nodes/hospital-a", "node.pub"),
        ("nodes/hospital-a", "release.pub"),
        ("coordinator", "server.crt"),
        ("coordinator", "server.key"),
        ("coordinator", "release.key"),
        ("coordinator", "nodes/clinic-3.pub"),
    ],
)
def test_missing_file_is_refused(kits: ProvisionReport, kit: str, name: str) -> None:
    (kits.out / kit / name).unlink()
    load = load_node_kit if kit.startswith("nodes") else load_coordinator_kit
    with pytest.raises(ConfigError, match=f"{name}: missing from the kit"):
        load(kits.out / kit, clock=lambda: later(1))


def test_node_public_key_of_another_node_is_refused(kits: ProvisionReport) -> None:
    a, b = kits.out / "nodes/hospital-a", kits.out / "nodes/hospital-b"
    shutil.copy2(b / "node.pub", a / "node.pub")
    with pytest.raises(ConfigError, match=r"node\.pub: does not match"):
        load_node_kit(a, clock=lambda: later(1))


def test_node_key_that_is_not_ecdsa_is_refused(kits: ProvisionReport) -> None:
    path = kits.out / "nodes/hospital-a/node.key"
    path.unlink()
    ed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.write_bytes(ed)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="expected an ECDSA node key"):
        load_node_kit(path.parent, clock=lambda: later(1))


def test_coordinator_host_missing_from_the_certificate_is_refused(kits: ProvisionReport) -> None:
    path = kits.out / "coordinator/kit.json"
    manifest = json.loads(path.read_text())
    manifest["coordinator"] = "elsewhere.example.org:9092"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not the coordinator host 'elsewhere.example.org'"):
        load_coordinator_kit(path.parent, clock=lambda: later(1))


def test_corrupt_manifest_is_refused(kits: ProvisionReport) -> None:
    path = kits.out / "nodes/hospital-a/kit.json"
    path.write_text('{"kind": "node"}')
    with pytest.raises(ConfigError, match=r"kit\.json: not a valid kit manifest: federation"):
        load_node_kit(path.parent)
