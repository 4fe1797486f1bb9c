"""`federator provision`: per-party kits, and the refusals when loading one.

Expected values come from independent routes: certificate chains are checked with the raw
ECDSA signature and with cryptography's own RFC 5280 path validator, fingerprints from the
PEM text via the standard library, key formats by loading them the way Flower does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import verification
from typer.testing import CliRunner

from federator import ConfigError
from federator.client.keys import key_id, load_public_key
from federator.server._manifest import FEDERATION_NAME
from federator.server.cli import app
from federator.server.kits import load_coordinator_kit, load_node_kit
from federator.server.provision import (
    FederationSpec,
    ProvisionReport,
    parse_federation,
    provision,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0
NODES = ("hospital-a", "hospital-b", "clinic-3")


def clock_at(when: datetime) -> float:
    return when.timestamp()


def spec(
    *, name: str = "acme-study", coordinator: str = "coord.example.org:9092", days: int = 30
) -> FederationSpec:
    raw = {
        "federation": {
            "name": name,
            "coordinator": coordinator,
            "extra_sans": ["10.0.0.5", "coord.internal"],
            "cert_days": days,
        },
        "nodes": [{"name": n} for n in NODES],
    }
    return parse_federation(raw, source="fed.toml")


@pytest.fixture
def kits(tmp_path: Path) -> ProvisionReport:
    return provision(spec(), out=tmp_path / "kits", clock=lambda: clock_at(T0))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _later(days: float) -> float:
    return clock_at(T0) + days * DAY


# --------------------------------------------------------------------------------------------
# What is written


def test_each_party_gets_exactly_its_files(kits: ProvisionReport) -> None:
    out = kits.out
    assert {p.name for p in out.iterdir()} == {"ca", "coordinator", "nodes"}
    assert _files(out / "ca") == {"ca.crt", "ca.key", "kit.json"}
    assert _files(out / "coordinator") == {
        "ca.crt",
        "server.crt",
        "server.key",
        "release.key",
        "release.pub",
        "kit.json",
        *(f"nodes/{n}.pub" for n in NODES),
    }
    assert {p.name for p in (out / "nodes").iterdir()} == set(NODES)
    for n in NODES:
        assert _files(out / "nodes" / n) == {
            "ca.crt",
            "node.key",
            "node.pub",
            "release.pub",
            "kit.json",
        }
    # The report lists what is on disk, and nothing was left beside the kits.
    for kit in kits.kits:
        assert set(kit.files) == _files(kit.folder)
    assert [k.party for k in kits.kits] == ["ca", "coordinator", *NODES]
    assert [p.name for p in out.parent.iterdir()] == ["kits"]


def test_private_keys_are_0600_and_folders_0700(kits: ProvisionReport) -> None:
    private = {"ca.key", "server.key", "release.key", "node.key"}
    seen = set()
    for path in [kits.out, *kits.out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name in private:
            seen.add(path.name)
            assert mode == 0o600, path
        else:
            assert mode & 0o022 == 0, path  # public files: nobody else may change them
    assert seen == private


def test_server_certificate_names_the_coordinator(kits: ProvisionReport) -> None:
    cert = x509.load_pem_x509_certificate((kits.out / "coordinator/server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "coord.example.org",
        "localhost",
        "coord.internal",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    }
    assert cert.not_valid_before_utc <= T0
    assert cert.not_valid_after_utc == T0 + timedelta(days=30)


@pytest.mark.parametrize(
    ("coordinator", "host"), [("192.0.2.7:9092", "192.0.2.7"), ("[2001:db8::1]:443", "2001:db8::1")]
)
def test_an_ip_coordinator_is_an_ip_san(tmp_path: Path, coordinator: str, host: str) -> None:
    report = provision(spec(coordinator=coordinator), out=tmp_path / "k")
    cert = x509.load_pem_x509_certificate((report.out / "coordinator/server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    assert host not in san.get_values_for_type(x509.DNSName)
    assert load_coordinator_kit(report.out / "coordinator").host == host


def test_server_certificate_chains_to_the_ca(kits: ProvisionReport) -> None:
    ca = x509.load_pem_x509_certificate((kits.out / "ca/ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((kits.out / "coordinator/server.crt").read_bytes())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    # Raw signature check; raises InvalidSignature if the CA did not sign it.
    ca_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    # And a full RFC 5280 / CA-B Forum path validation, as a TLS client would do it.
    for name in (
        verification.DNSName("coord.example.org"),
        verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([ca]))
            .time(T0 + timedelta(days=1))
            .build_server_verifier(name)
        )
        assert verifier.verify(cert, []) == [cert, ca]
    # The CA private key stays in ca/, and it is the key of ca.crt.
    ca_private = serialization.load_pem_private_key(
        (kits.out / "ca/ca.key").read_bytes(), password=None
    )
    assert isinstance(ca_private, ec.EllipticCurvePrivateKey)
    assert ca_private.public_key().public_numbers() == ca_key.public_numbers()


def test_node_keys_are_openssh_ecdsa_p384_and_registered(kits: ProvisionReport) -> None:
    publics = set()
    for n in NODES:
        folder = kits.out / "nodes" / n
        raw = (folder / "node.key").read_bytes()
        assert raw.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        private = serialization.load_ssh_private_key(raw, password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        pub_text = (folder / "node.pub").read_bytes()
        assert pub_text.startswith(b"ecdsa-sha2-nistp384 ")
        public = serialization.load_ssh_public_key(pub_text)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.public_numbers() == private.public_key().public_numbers()
        # The coordinator registers exactly this key under this name.
        assert (kits.out / "coordinator/nodes" / f"{n}.pub").read_bytes() == pub_text
        publics.add(pub_text.split()[1])
    assert len(publics) == len(NODES)


def test_release_key_and_manifests(kits: ProvisionReport) -> None:
    coord = kits.out / "coordinator"
    signing = serialization.load_pem_private_key((coord / "release.key").read_bytes(), None)
    assert isinstance(signing, Ed25519PrivateKey)
    assert key_id(signing.public_key()) == kits.release_key_id
    pem = (kits.out / "ca/ca.crt").read_text()
    fp = "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    assert kits.ca_fingerprint == fp
    manifest = json.loads((coord / "kit.json").read_text())
    assert manifest["kind"] == "coordinator"
    assert manifest["nodes"] == list(NODES)
    assert manifest["ca_fingerprint"] == fp
    assert manifest["created"] == "2026-03-01T12:00:00Z"
    for n in NODES:
        folder = kits.out / "nodes" / n
        assert (folder / "release.pub").read_bytes() == (coord / "release.pub").read_bytes()
        assert (folder / "ca.crt").read_text() == pem
        manifest = json.loads((folder / "kit.json").read_text())
        assert (manifest["kind"], manifest["node"]) == ("node", n)
        assert (manifest["federation"], manifest["coordinator"]) == (
            "acme-study",
            "coord.example.org:9092",
        )
        assert manifest["ca_fingerprint"] == fp


def test_loaded_kits_point_at_the_files(kits: ProvisionReport) -> None:
    clock = lambda: _later(1)  # noqa: E731
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


def test_federation_name_pattern_matches_the_config() -> None:
    from federator.server.config import _NAME

    assert FEDERATION_NAME == _NAME


# --------------------------------------------------------------------------------------------
# Refusals while provisioning


def test_duplicate_node_names_are_refused() -> None:
    raw = {
        "federation": {"name": "f", "coordinator": "c.example:1"},
        "nodes": [{"name": "a"}, {"name": "b"}, {"name": "a"}],
    }
    with pytest.raises(ConfigError, match="must be unique; repeated: a"):
        parse_federation(raw, source="fed.toml")


@pytest.mark.parametrize("name", ["Hospital-A", "hospital_a", "-a", "a-", "a" * 64, "a.b", ""])
def test_bad_node_names_are_refused(name: str) -> None:
    raw = {"federation": {"name": "f", "coordinator": "c.example:1"}, "nodes": [{"name": name}]}
    with pytest.raises(ConfigError, match=r"nodes\.0\.name: a node name is a DNS label"):
        parse_federation(raw, source="fed.toml")


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"coordinator": "coord.example.org"}, "expected host:port"),
        ({"coordinator": "coord.example.org:0"}, "not in 1..65535"),
        ({"coordinator": "Coord_Example:80"}, "not a lower-case DNS name"),
        ({"coordinator": "[zz::1]:80"}, "expected host:port"),
        ({"extra_sans": ["bad name"]}, "not a lower-case DNS name"),
        ({"name": "has space"}, "federation.name"),
        ({"cert_days": 0}, "greater than or equal to 1"),
        ({"colour": "blue"}, "federation.colour: unknown key"),
    ],
)
def test_bad_federation_section_is_refused(section: dict[str, object], problem: str) -> None:
    raw = {
        "federation": {"name": "f", "coordinator": "c.example:1", **section},
        "nodes": [{"name": "a"}],
    }
    with pytest.raises(ConfigError, match=problem):
        parse_federation(raw, source="fed.toml")


def test_no_nodes_is_refused() -> None:
    raw = {"federation": {"name": "f", "coordinator": "c.example:1"}, "nodes": []}
    with pytest.raises(ConfigError, match="at least one"):
        parse_federation(raw, source="fed.toml")


def test_a_non_empty_out_is_never_overwritten(kits: ProvisionReport) -> None:
    before = (kits.out / "coordinator/server.key").read_bytes()
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        provision(spec(), out=kits.out)
    assert (kits.out / "coordinator/server.key").read_bytes() == before
    assert [p.name for p in kits.out.parent.iterdir()] == ["kits"]


def test_an_empty_out_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = provision(spec(), out=tmp_path / "empty")
    assert _files(report.out / "ca") == {"ca.crt", "ca.key", "kit.json"}


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
        load_coordinator_kit(kits.out / "coordinator", clock=lambda: _later(days))
    with pytest.raises(ConfigError, match=problem):
        load_node_kit(kits.out / "nodes/hospital-a", clock=lambda: _later(days))


def test_last_day_of_validity_is_accepted(kits: ProvisionReport) -> None:
    load_coordinator_kit(kits.out / "coordinator", clock=lambda: _later(29.9))


def test_certificate_from_another_ca_is_refused(kits: ProvisionReport, tmp_path: Path) -> None:
    other = provision(spec(), out=tmp_path / "other", clock=lambda: clock_at(T0))
    coord = kits.out / "coordinator"
    for name in ("server.crt", "server.key"):
        shutil.copy2(other.out / "coordinator" / name, coord / name)
    with pytest.raises(ConfigError, match=r"server\.crt: certificate was not issued by"):
        load_coordinator_kit(coord, clock=lambda: _later(1))
    node = kits.out / "nodes/hospital-b"
    shutil.copy2(other.out / "nodes/hospital-b/ca.crt", node / "ca.crt")
    with pytest.raises(ConfigError, match=r"ca\.crt: not this federation's CA"):
        load_node_kit(node, clock=lambda: _later(1))


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
        load(kits.out / kit, clock=lambda: _later(1))


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
        load(kits.out / kit, clock=lambda: _later(1))


def test_node_public_key_of_another_node_is_refused(kits: ProvisionReport) -> None:
    a, b = kits.out / "nodes/hospital-a", kits.out / "nodes/hospital-b"
    shutil.copy2(b / "node.pub", a / "node.pub")
    with pytest.raises(ConfigError, match=r"node\.pub: does not match"):
        load_node_kit(a, clock=lambda: _later(1))


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
        load_node_kit(path.parent, clock=lambda: _later(1))


def test_coordinator_host_missing_from_the_certificate_is_refused(kits: ProvisionReport) -> None:
    path = kits.out / "coordinator/kit.json"
    manifest = json.loads(path.read_text())
    manifest["coordinator"] = "elsewhere.example.org:9092"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not the coordinator host 'elsewhere.example.org'"):
        load_coordinator_kit(path.parent, clock=lambda: _later(1))


def test_corrupt_manifest_is_refused(kits: ProvisionReport) -> None:
    path = kits.out / "nodes/hospital-a/kit.json"
    path.write_text('{"kind": "node"}')
    with pytest.raises(ConfigError, match=r"kit\.json: not a valid kit manifest: federation"):
        load_node_kit(path.parent)


# --------------------------------------------------------------------------------------------
# The command


def test_provision_command_writes_kits_and_refuses_a_rerun(tmp_path: Path) -> None:
    file = tmp_path / "fed.toml"
    file.write_text(
        '[federation]\nname = "acme-study"\ncoordinator = "coord.example.org:9092"\n'
        '[[nodes]]\nname = "hospital-a"\n[[nodes]]\nname = "hospital-b"\n'
    )
    runner = CliRunner()
    result = runner.invoke(app, ["provision", str(file), "--out", str(tmp_path / "kits")])
    assert result.exit_code == 0, result.output
    assert "hospital-b" in result.output
    assert "CA fingerprint:  sha256:" in result.output
    assert "secure channel" in result.output
    load_node_kit(tmp_path / "kits/nodes/hospital-b", federation="acme-study")
    again = runner.invoke(app, ["provision", str(file), "--out", str(tmp_path / "kits")])
    assert again.exit_code == 2
    assert "not empty" in again.output


def test_provision_command_bad_file_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "fed.toml"
    file.write_text('[federation]\nname = "x"\ncoordinator = "c.example:1"\n')
    result = CliRunner().invoke(app, ["provision", str(file), "--out", str(tmp_path / "k")])
    assert result.exit_code == 2
    assert "nodes: required key is missing" in result.output
    assert not (tmp_path / "k").exists()
