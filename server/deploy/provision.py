"""``federator provision``: per-party deployment kits from a short federation file.

A federation file names the federation, the address nodes dial, and the nodes::

    [federation]
    name = "acme-study"
    coordinator = "coord.example.org:9092"   # host:port; the host goes into the server cert
    extra_sans = ["10.0.0.5"]                # optional: more names/IPs for the server cert
    cert_days = 365                          # optional
    [[nodes]]
    name = "hospital-a"

`provision` writes one folder per party, each holding only what that party needs::

    out/ca/            ca.crt, ca.key, kit.json                     keep offline
    out/coordinator/   ca.crt, server.crt, server.key, release.key, release.pub,
                       nodes/<name>.pub, kit.json                   the coordinator's operator
    out/nodes/<name>/  ca.crt, node.key, node.pub, release.pub, kit.json   that node's operator

The CA's private key is not in the coordinator's kit: a running SuperLink never needs it, so a
compromised coordinator cannot mint certificates. Private keys are 0600, folders 0700. All
kits appear at once (written to a hidden sibling folder, then renamed), and an existing
non-empty ``out`` is refused, so a re-run never silently replaces keys that were handed out.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federator import ConfigError, __version__
from federator.client.certs import fingerprint
from federator.client.keys import PUBLIC_NAME as RELEASE_PUB
from federator.client.keys import generate_keys
from federator.client.kit import (
    CA_CERT,
    FEDERATION_NAME,
    NODE_KEY,
    NODE_NAME,
    NODE_PUB,
    KitKind,
    Manifest,
)
from federator.server.deploy import _certs
from federator.server.deploy.manifest import (
    CA_KEY,
    NODES_DIR,
    SERVER_CERT,
    SERVER_KEY,
    make_dir,
    write_file,
    write_manifest,
)

_ADDRESS = re.compile(r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})$")


# --------------------------------------------------------------------------------------------
# The federation file (I/O edge)


def _check_name(value: str) -> str:
    if not (_certs.is_ip(value) or _certs.is_dns_name(value)):
        raise ValueError("not a lower-case DNS name or an IP address")
    return value


class _FederationTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=FEDERATION_NAME)]
    coordinator: str
    extra_sans: tuple[str, ...] = ()
    cert_days: Annotated[int, Field(ge=1, le=3650)] = 365

    @field_validator("coordinator")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("extra_sans")
    @classmethod
    def _sans(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_name(v) for v in value)


class _NodeTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    @field_validator("name")
    @classmethod
    def _label(cls, value: str) -> str:
        if not re.match(NODE_NAME, value):
            raise ValueError(
                "a node name is a DNS label: lower-case letters, digits and '-', "
                "1 to 63 characters, not starting or ending with '-'"
            )
        return value


class _FederationFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    federation: _FederationTable
    nodes: tuple[_NodeTable, ...]

    @field_validator("nodes")
    @classmethod
    def _unique(cls, value: tuple[_NodeTable, ...]) -> tuple[_NodeTable, ...]:
        if not value:
            raise ValueError("at least one [[nodes]] entry is needed")
        names = [n.name for n in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"node names must be unique; repeated: {', '.join(twice)}")
        return value


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (or ``[ipv6]:port``) → (host, port); `ValueError` otherwise."""
    match = _ADDRESS.match(value)
    if not match:
        raise ValueError("expected host:port (or [ipv6]:port)")
    host = match["ip6"] or match["host"]
    if match["ip6"] and not _certs.is_ip(host):
        raise ValueError(f"{host!r} is not an IPv6 address")
    _check_name(host)
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    return host, port


@dataclass(frozen=True)
class FederationSpec:
    """A validated federation file: who takes part and where nodes connect."""

    name: str
    coordinator: str  # host:port, as nodes dial it
    host: str
    port: int
    nodes: tuple[str, ...]
    extra_sans: tuple[str, ...] = ()
    cert_days: int = 365

    @property
    def server_names(self) -> tuple[str, ...]:
        """The server certificate's subjectAltNames: host, localhost, 127.0.0.1, extras."""
        return tuple(dict.fromkeys((self.host, "localhost", "127.0.0.1", *self.extra_sans)))


def parse_federation(raw: Mapping[str, Any], *, source: str) -> FederationSpec:
    """Validate a parsed federation file; `ConfigError` listing every problem otherwise."""
    try:
        f = _FederationFile.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key")
            elif e["type"] == "missing":
                problems.append(f"{where}: required key is missing")
            else:
                problems.append(
                    f"{where}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"
                )
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: invalid federation file:\n{lines}") from None
    host, port = parse_address(f.federation.coordinator)
    return FederationSpec(
        name=f.federation.name,
        coordinator=f.federation.coordinator,
        host=host,
        port=port,
        nodes=tuple(n.name for n in f.nodes),
        extra_sans=f.federation.extra_sans,
        cert_days=f.federation.cert_days,
    )


def read_federation_file(path: Path) -> FederationSpec:
    """Read and validate a federation file (TOML)."""
    from federator.server.plan import read_config_file

    return parse_federation(read_config_file(path), source=str(path))


# --------------------------------------------------------------------------------------------
# Writing the kits


@dataclass(frozen=True)
class PartyKit:
    """One party's folder and the files in it."""

    kind: KitKind
    party: str  # "ca", "coordinator" or the node's name
    folder: Path
    files: tuple[str, ...]  # relative to folder, sorted


@dataclass(frozen=True)
class ProvisionReport:
    """What `provision` wrote."""

    out: Path
    federation: str
    coordinator: str
    kits: tuple[PartyKit, ...]  # ca, coordinator, then nodes in file order
    ca_fingerprint: str
    release_key_id: str
    not_after: datetime  # when the server certificate expires


def _files(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))


def _check_out(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"{out}: already exists and is not empty; refusing to replace kits that may have "
            "been handed out (choose another --out, or remove it deliberately)"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")


def provision(
    spec: FederationSpec, *, out: Path, clock: Callable[[], float] = time.time
) -> ProvisionReport:
    """Create the CA, the coordinator's kit and one kit per node under ``out``."""
    _check_out(out)
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.fromtimestamp(clock(), tz=UTC).replace(microsecond=0)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ca_fp, key_id, not_after = _write_kits(spec, staging, now=now)
        try:
            os.rename(staging, out)  # replaces an empty folder; fails on a non-empty one
        except OSError as err:
            raise ConfigError(f"{out}: cannot create the kits there ({err.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parties = [
        (KitKind.CA, "ca", out / "ca"),
        (KitKind.COORDINATOR, "coordinator", out / "coordinator"),
    ]
    parties += [(KitKind.NODE, n, out / NODES_DIR / n) for n in spec.nodes]
    return ProvisionReport(
        out=out,
        federation=spec.name,
        coordinator=spec.coordinator,
        kits=tuple(PartyKit(kind, party, d, _files(d)) for kind, party, d in parties),
        ca_fingerprint=ca_fp,
        release_key_id=key_id,
        not_after=not_after,
    )


def _write_kits(spec: FederationSpec, root: Path, *, now: datetime) -> tuple[str, str, datetime]:
    ca_key = _certs.new_key()
    ca_cert = _certs.new_ca(ca_key, federation=spec.name, now=now, days=spec.cert_days)
    server_key = _certs.new_key()
    server_cert = _certs.new_server_cert(
        server_key,
        ca_key=ca_key,
        ca_cert=ca_cert,
        federation=spec.name,
        names=spec.server_names,
        now=now,
        days=spec.cert_days,
    )
    ca_pem, ca_fp = _certs.cert_pem(ca_cert), fingerprint(ca_cert)

    def manifest(kind: KitKind, *, node: str | None = None, key_id: str | None = None) -> Manifest:
        return Manifest(
            kind=kind,
            federation=spec.name,
            coordinator=spec.coordinator,
            node=node,
            nodes=spec.nodes if kind is KitKind.COORDINATOR else (),
            ca_fingerprint=ca_fp,
            release_key_id=key_id,
            created=now,
            federator_version=__version__,
        )

    ca_dir = root / "ca"
    make_dir(ca_dir)
    write_file(ca_dir / CA_CERT, ca_pem)
    write_file(ca_dir / CA_KEY, _certs.key_pem(ca_key), private=True)
    write_manifest(ca_dir, manifest(KitKind.CA))

    coord = root / "coordinator"
    make_dir(coord)
    write_file(coord / CA_CERT, ca_pem)
    write_file(coord / SERVER_CERT, _certs.cert_pem(server_cert))
    write_file(coord / SERVER_KEY, _certs.key_pem(server_key), private=True)
    release = generate_keys(coord)
    os.chmod(release.public, 0o644)  # written under the umask; make it like every other file
    release_pub = release.public.read_bytes()
    make_dir(coord / NODES_DIR)

    make_dir(root / NODES_DIR)
    for name in spec.nodes:
        node_key = _certs.new_key()
        public = _certs.openssh_public(node_key.public_key(), comment=f"{name}@{spec.name}")
        write_file(coord / NODES_DIR / f"{name}.pub", public)
        folder = root / NODES_DIR / name
        make_dir(folder)
        write_file(folder / CA_CERT, ca_pem)
        write_file(folder / NODE_KEY, _certs.openssh_private(node_key), private=True)
        write_file(folder / NODE_PUB, public)
        write_file(folder / RELEASE_PUB, release_pub)
        write_manifest(folder, manifest(KitKind.NODE, node=name, key_id=release.key_id))
    write_manifest(coord, manifest(KitKind.COORDINATOR, key_id=release.key_id))
    return ca_fp, release.key_id, server_cert.not_valid_after_utc
