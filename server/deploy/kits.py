"""Loading a deployment kit made by `federator.server.deploy.provision`, checked before
anything starts.

A coordinator or node is started from its kit folder. Everything that would otherwise surface
as an obscure TLS handshake failure, a Flower exit code, or — worse — a working connection to
the wrong federation is checked here first and refused with a `ConfigError` naming the file:

- the folder is a kit of the expected kind and federation (``kit.json``);
- every file is present, and private keys are not readable by group or others;
- ``ca.crt`` is a CA and is the one ``kit.json`` pins (by SHA-256 fingerprint);
- certificates are valid at ``clock()`` (not expired, not yet valid);
- the server certificate was issued by that CA, names the coordinator's host, and matches
  ``server.key``;
- node keys are OpenSSH ECDSA on a NIST curve (what Flower's node authentication requires),
  and public and private halves match;
- ``release.pub`` is the release key ``kit.json`` names (by key id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federator import ConfigError
from federator.client.keys import PRIVATE_NAME as RELEASE_KEY
from federator.client.keys import PUBLIC_NAME as RELEASE_PUB
from federator.client.keys import key_id, load_public_key
from federator.server.deploy import _certs
from federator.server.deploy.manifest import (
    CA_CERT,
    MANIFEST,
    NODE_KEY,
    NODE_PUB,
    NODES_DIR,
    SERVER_CERT,
    SERVER_KEY,
    KitKind,
    Manifest,
    read_manifest,
)
from federator.server.deploy.provision import parse_address


@dataclass(frozen=True)
class NodeKit:
    """A node's checked kit: what ``flower-supernode`` needs to join the federation."""

    folder: Path
    federation: str
    node: str  # the name the coordinator registered this node's key under
    coordinator: str  # host:port to dial (``--superlink``)
    ca_cert: Path  # ``--root-certificates``
    node_key: Path  # ``--auth-supernode-private-key`` (OpenSSH ECDSA, 0600)
    node_pub: Path
    release_pub: Path  # the release key to pin
    ca_fingerprint: str  # sha256:<hex>
    release_key_id: str
    not_after: datetime  # when the CA certificate expires


@dataclass(frozen=True)
class NodeKey:
    """A node's registered public key, in the coordinator's kit."""

    name: str
    public_key: Path  # ``flwr supernode register <public_key> <federation> --name <name>``


@dataclass(frozen=True)
class CoordinatorKit:
    """The coordinator's checked kit: what ``flower-superlink`` needs to serve the federation."""

    folder: Path
    federation: str
    coordinator: str  # host:port nodes dial
    host: str
    port: int
    ca_cert: Path  # ``--ssl-ca-certfile``
    server_cert: Path  # ``--ssl-certfile``
    server_key: Path  # ``--ssl-keyfile`` (0600)
    release_key: Path  # signs releases (0600)
    release_pub: Path
    nodes: tuple[NodeKey, ...]  # in federation-file order
    server_names: tuple[str, ...]  # the server certificate's subjectAltNames
    ca_fingerprint: str
    release_key_id: str
    not_after: datetime  # when the server certificate expires


def _now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), tz=UTC)


def _manifest(folder: Path, kind: KitKind, federation: str | None) -> Manifest:
    manifest = read_manifest(folder)
    if manifest.kind is not kind:
        raise ConfigError(
            f"{folder / MANIFEST}: this is a {manifest.kind.value} kit, not a {kind.value} kit"
        )
    if federation is not None and manifest.federation != federation:
        raise ConfigError(
            f"{folder / MANIFEST}: this kit belongs to federation {manifest.federation!r}, "
            f"not {federation!r} (kit of another federation)"
        )
    return manifest


def _present(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the kit; provision the kits again")


def _release_key_id(path: Path, manifest: Manifest) -> str:
    found = key_id(load_public_key(path))
    if found != manifest.release_key_id:
        raise ConfigError(
            f"{path}: release key {found} is not the one kit.json names "
            f"({manifest.release_key_id}); files from different kits?"
        )
    return found


def _ca(folder: Path, manifest: Manifest, *, now: datetime) -> x509.Certificate:
    path = folder / CA_CERT
    ca = _certs.load_cert(path)
    found = _certs.fingerprint(ca)
    if found != manifest.ca_fingerprint:
        raise ConfigError(
            f"{path}: not this federation's CA (fingerprint {found}, kit.json pins "
            f"{manifest.ca_fingerprint}); wrong CA, or files from different kits"
        )
    _certs.check_ca(ca, path)
    _certs.check_validity(ca, path, now=now)
    return ca


def load_node_kit(
    path: Path, *, federation: str | None = None, clock: Callable[[], float] = time.time
) -> NodeKit:
    """Check the node kit in folder ``path`` (of ``federation``, when given)."""
    manifest = _manifest(path, KitKind.NODE, federation)
    if manifest.node is None or manifest.release_key_id is None:
        raise ConfigError(f"{path / MANIFEST}: a node kit must name its node and release key")
    _present(path, CA_CERT, NODE_KEY, NODE_PUB, RELEASE_PUB)
    _certs.check_private_mode(path / NODE_KEY)
    ca = _ca(path, manifest, now=_now(clock))
    private = _certs.load_node_private(path / NODE_KEY)
    public = _certs.load_node_public(path / NODE_PUB)
    if not _certs.same_public_key(private.public_key(), public):
        raise ConfigError(f"{path / NODE_PUB}: does not match {path / NODE_KEY}")
    return NodeKit(
        folder=path,
        federation=manifest.federation,
        node=manifest.node,
        coordinator=manifest.coordinator,
        ca_cert=path / CA_CERT,
        node_key=path / NODE_KEY,
        node_pub=path / NODE_PUB,
        release_pub=path / RELEASE_PUB,
        ca_fingerprint=manifest.ca_fingerprint,
        release_key_id=_release_key_id(path / RELEASE_PUB, manifest),
        not_after=ca.not_valid_after_utc,
    )


def load_coordinator_kit(
    path: Path, *, federation: str | None = None, clock: Callable[[], float] = time.time
) -> CoordinatorKit:
    """Check the coordinator kit in folder ``path`` (of ``federation``, when given)."""
    manifest = _manifest(path, KitKind.COORDINATOR, federation)
    if manifest.release_key_id is None or not manifest.nodes:
        raise ConfigError(f"{path / MANIFEST}: a coordinator kit must name its nodes and key")
    try:
        host, port = parse_address(manifest.coordinator)
    except ValueError as err:
        raise ConfigError(f"{path / MANIFEST}: coordinator: {err}") from None
    node_pubs = [f"{NODES_DIR}/{n}.pub" for n in manifest.nodes]
    _present(path, CA_CERT, SERVER_CERT, SERVER_KEY, RELEASE_KEY, RELEASE_PUB, *node_pubs)
    for private in (SERVER_KEY, RELEASE_KEY):
        _certs.check_private_mode(path / private)
    now = _now(clock)
    ca = _ca(path, manifest, now=now)
    cert_path = path / SERVER_CERT
    cert = _certs.load_cert(cert_path)
    _certs.check_issued_by(cert, ca, cert_path, issuer_path=path / CA_CERT)
    _certs.check_validity(cert, cert_path, now=now)
    names = _certs.san_names(cert)
    if host not in names:
        raise ConfigError(
            f"{cert_path}: certificate names {', '.join(names) or 'no host'}, not the "
            f"coordinator host {host!r}; nodes would refuse the connection"
        )
    key = _certs.load_ec_private_pem(path / SERVER_KEY)
    if not _certs.same_public_key(key.public_key(), cert.public_key()):
        raise ConfigError(f"{path / SERVER_KEY}: does not match {cert_path}")
    release_id = _release_key_id(path / RELEASE_PUB, manifest)
    _check_release_pair(path / RELEASE_KEY, release_id)
    for rel in node_pubs:
        _certs.load_node_public(path / rel)
    return CoordinatorKit(
        folder=path,
        federation=manifest.federation,
        coordinator=manifest.coordinator,
        host=host,
        port=port,
        ca_cert=path / CA_CERT,
        server_cert=cert_path,
        server_key=path / SERVER_KEY,
        release_key=path / RELEASE_KEY,
        release_pub=path / RELEASE_PUB,
        nodes=tuple(
            NodeKey(n, path / rel) for n, rel in zip(manifest.nodes, node_pubs, strict=True)
        ),
        server_names=names,
        ca_fingerprint=manifest.ca_fingerprint,
        release_key_id=release_id,
        not_after=cert.not_valid_after_utc,
    )


def _check_release_pair(path: Path, expected_id: str) -> None:
    """The release key must be the private half of ``release.pub``. A key the operator has
    since encrypted with a passphrase cannot be opened here; it is checked when signing."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        return  # passphrase-protected
    except (OSError, ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not a usable release signing key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    if key_id(key.public_key()) != expected_id:
        raise ConfigError(f"{path}: does not match {path.with_name(RELEASE_PUB)}")
