"""Loading the coordinator's deployment kit made by `federator.server.deploy.provision`,
checked before anything starts.

A coordinator is started from its kit folder; a node from its own (`federator.client.kit`,
whose checks this module shares). Beyond those — the kit's kind and federation, every file
present, private keys not readable by group or others, ``ca.crt`` the pinned CA and valid,
``release.pub`` the key ``kit.json`` names — the coordinator's kit is refused with a
`ConfigError` naming the file unless:

- the server certificate is valid at ``clock()``, was issued by that CA, names the
  coordinator's host, and matches ``server.key``;
- every registered node key is OpenSSH ECDSA on a NIST curve (what Flower's node
  authentication requires);
- ``release.key`` is the private half of ``release.pub`` (when it is not passphrase-protected).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federator import ConfigError
from federator.client import certs
from federator.client.keys import PRIVATE_NAME as RELEASE_KEY
from federator.client.keys import PUBLIC_NAME as RELEASE_PUB
from federator.client.keys import key_id
from federator.client.kit import (
    CA_CERT,
    MANIFEST,
    KitKind,
    check_kit_ca,
    check_release_key,
    kit_manifest,
    require_files,
)
from federator.server.deploy import _certs
from federator.server.deploy.manifest import NODES_DIR, SERVER_CERT, SERVER_KEY
from federator.server.deploy.provision import parse_address


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


def load_coordinator_kit(
    path: Path, *, federation: str | None = None, clock: Callable[[], float] = time.time
) -> CoordinatorKit:
    """Check the coordinator kit in folder ``path`` (of ``federation``, when given)."""
    manifest = kit_manifest(path, KitKind.COORDINATOR, federation)
    if manifest.release_key_id is None or not manifest.nodes:
        raise ConfigError(f"{path / MANIFEST}: a coordinator kit must name its nodes and key")
    try:
        host, port = parse_address(manifest.coordinator)
    except ValueError as err:
        raise ConfigError(f"{path / MANIFEST}: coordinator: {err}") from None
    node_pubs = [f"{NODES_DIR}/{n}.pub" for n in manifest.nodes]
    require_files(path, CA_CERT, SERVER_CERT, SERVER_KEY, RELEASE_KEY, RELEASE_PUB, *node_pubs)
    for private in (SERVER_KEY, RELEASE_KEY):
        certs.check_private_mode(path / private)
    now = datetime.fromtimestamp(clock(), tz=UTC)
    ca = check_kit_ca(path, manifest, now=now)
    cert_path = path / SERVER_CERT
    cert = certs.load_cert(cert_path)
    certs.check_issued_by(cert, ca, cert_path, issuer_path=path / CA_CERT)
    certs.check_validity(cert, cert_path, now=now)
    names = _certs.san_names(cert)
    if host not in names:
        raise ConfigError(
            f"{cert_path}: certificate names {', '.join(names) or 'no host'}, not the "
            f"coordinator host {host!r}; nodes would refuse the connection"
        )
    key = _certs.load_ec_private_pem(path / SERVER_KEY)
    if not certs.same_public_key(key.public_key(), cert.public_key()):
        raise ConfigError(f"{path / SERVER_KEY}: does not match {cert_path}")
    release_id = check_release_key(path / RELEASE_PUB, manifest)
    _check_release_pair(path / RELEASE_KEY, release_id)
    for rel in node_pubs:
        certs.load_node_public(path / rel)
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
