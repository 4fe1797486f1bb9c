"""A node's deployment kit, read and checked before the node starts.

A kit is a folder made by `federator provision` (`federator.server.deploy.provision`) for one
party. Its ``kit.json`` (`Manifest`) says which federation and which party the folder belongs
to, and pins the CA by fingerprint: a loader refuses a kit whose ``ca.crt`` was swapped, or a
kit of another federation, before anything starts. `load_node_kit` checks a node's kit —
everything that would otherwise surface as an obscure TLS handshake failure, a Flower exit
code, or a working connection to the wrong federation — and refuses it with a `ConfigError`
naming the file:

- the folder is a node kit of the expected federation (``kit.json``);
- every file is present, and the node's private key is not readable by group or others;
- ``ca.crt`` is a CA, is the one ``kit.json`` pins, and is valid at ``clock()``;
- the node key is OpenSSH ECDSA on a NIST curve (what Flower's node authentication
  requires), and its public and private halves match;
- ``release.pub`` is the release key ``kit.json`` names (by key id).

The coordinator's kit is loaded by `federator.server.deploy.kits` with the same checks
(the helpers below) and its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import ConfigError
from federator.client import certs
from federator.client.keys import PUBLIC_NAME as RELEASE_PUB
from federator.client.keys import key_id, load_public_key

MANIFEST = "kit.json"
CA_CERT = "ca.crt"
NODE_KEY = "node.key"
NODE_PUB = "node.pub"

#: Same pattern as a federation config's ``federation.name`` (``server.config._NAME``).
FEDERATION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
#: A node name is a DNS label (RFC 1123), lower case: it names a folder and a registered key.
NODE_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class KitKind(StrEnum):
    """Which party a kit folder is for."""

    CA = "ca"
    COORDINATOR = "coordinator"
    NODE = "node"


class Manifest(BaseModel):
    """The content of ``kit.json`` (the I/O edge for kits, hence pydantic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    kind: KitKind
    federation: Annotated[str, Field(pattern=FEDERATION_NAME)]
    coordinator: Annotated[str, Field(min_length=1)]
    node: Annotated[str, Field(pattern=NODE_NAME)] | None = None
    nodes: tuple[Annotated[str, Field(pattern=NODE_NAME)], ...] = ()
    ca_fingerprint: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    release_key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    created: datetime
    federator_version: str


def read_manifest(folder: Path) -> Manifest:
    """``folder/kit.json`` validated; `ConfigError` naming the file otherwise."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such kit folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: missing; is {folder} a kit made by `federator provision`?"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    try:
        return Manifest.model_validate(json.loads(text))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        raise ConfigError(f"{path}: not a valid kit manifest: {problems}") from None


def kit_manifest(folder: Path, kind: KitKind, federation: str | None) -> Manifest:
    """``folder``'s manifest, refused unless it is a ``kind`` kit (of ``federation``)."""
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


def require_files(folder: Path, *names: str) -> None:
    """Refuse a kit that lacks any of ``names``."""
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the kit; provision the kits again")


def check_release_key(path: Path, manifest: Manifest) -> str:
    """The key id of ``release.pub`` at ``path``, refused unless ``kit.json`` names it."""
    found = key_id(load_public_key(path))
    if found != manifest.release_key_id:
        raise ConfigError(
            f"{path}: release key {found} is not the one kit.json names "
            f"({manifest.release_key_id}); files from different kits?"
        )
    return found


def check_kit_ca(folder: Path, manifest: Manifest, *, now: datetime) -> x509.Certificate:
    """The kit's ``ca.crt``: the CA ``kit.json`` pins, a CA, valid at ``now``."""
    path = folder / CA_CERT
    ca = certs.load_cert(path)
    found = certs.fingerprint(ca)
    if found != manifest.ca_fingerprint:
        raise ConfigError(
            f"{path}: not this federation's CA (fingerprint {found}, kit.json pins "
            f"{manifest.ca_fingerprint}); wrong CA, or files from different kits"
        )
    certs.check_ca(ca, path)
    certs.check_validity(ca, path, now=now)
    return ca


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


def load_node_kit(
    path: Path, *, federation: str | None = None, clock: Callable[[], float] = time.time
) -> NodeKit:
    """Check the node kit in folder ``path`` (of ``federation``, when given)."""
    manifest = kit_manifest(path, KitKind.NODE, federation)
    if manifest.node is None or manifest.release_key_id is None:
        raise ConfigError(f"{path / MANIFEST}: a node kit must name its node and release key")
    require_files(path, CA_CERT, NODE_KEY, NODE_PUB, RELEASE_PUB)
    certs.check_private_mode(path / NODE_KEY)
    ca = check_kit_ca(path, manifest, now=datetime.fromtimestamp(clock(), tz=UTC))
    private = certs.load_node_private(path / NODE_KEY)
    public = certs.load_node_public(path / NODE_PUB)
    if not certs.same_public_key(private.public_key(), public):
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
        release_key_id=check_release_key(path / RELEASE_PUB, manifest),
        not_after=ca.not_valid_after_utc,
    )


__all__ = [
    "CA_CERT",
    "FEDERATION_NAME",
    "MANIFEST",
    "NODE_KEY",
    "NODE_NAME",
    "NODE_PUB",
    "KitKind",
    "Manifest",
    "NodeKit",
    "check_kit_ca",
    "check_release_key",
    "kit_manifest",
    "load_node_kit",
    "read_manifest",
    "require_files",
]
