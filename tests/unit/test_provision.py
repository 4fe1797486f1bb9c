"""`federator provision`: what each party's kit holds, and refusals while provisioning.

Expected values come from independent routes: certificate chains are checked with the raw
ECDSA signature and with cryptography's own RFC 5280 path validator, fingerprints from the
PEM text via the standard library, key formats by loading them the way Flower does. Loading
kits (and its refusals) is tested in test_kits.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import ssl
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import verification
from provisioning import NODES, T0, files, make_kits, spec
from typer.testing import CliRunner

from federator import ConfigError
from federator.client.keys import key_id
from federator.client.kit import FEDERATION_NAME, load_node_kit
from federator.server.cli import app
from federator.server.deploy.kits import load_coordinator_kit
from federator.server.deploy.provision import ProvisionReport, parse_federation, provision


@pytest.fixture
def kits(tmp_path: Path) -> ProvisionReport:
    return make_kits(tmp_path / "kits")


# --------------------------------------------------------------------------------------------
# What is written


def test_each_party_gets_exactly_itsfiles(kits: ProvisionReport) -> None:
    out = kits.out
    assert {p.name for p in out.iterdir()} == {"ca", "coordinator", "nodes"}
    assert files(out / "ca") == {"ca.crt", "ca.key", "kit.json"}
    assert files(out / "coordinator") == {
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
        assert files(out / "nodes" / n) == {
            "ca.crt",
            "node.key",
            "node.pub",
            "release.pub",
            "kit.json",
        }
    # The report lists what is on disk, and nothing was left beside the kits.
    for kit in kits.kits:
        assert set(kit.files) == files(kit.folder)
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


def test_federation_name_pattern_matches_the_config() -> None:
    from federator.server.plan.config import _NAME

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
    assert files(report.out / "ca") == {"ca.crt", "ca.key", "kit.json"}


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
