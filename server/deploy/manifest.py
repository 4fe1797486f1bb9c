"""A kit's ``kit.json`` and the file layout of the kits, shared by writing and loading.

``kit.json`` says which federation and which party a folder belongs to, and pins the CA by
fingerprint: a loader refuses a kit whose ``ca.crt`` was swapped, or a kit of another
federation, before anything starts. It is the I/O edge for kits, hence pydantic here.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import ConfigError

MANIFEST = "kit.json"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
NODE_KEY = "node.key"
NODE_PUB = "node.pub"
NODES_DIR = "nodes"  # in the coordinator kit: nodes/<name>.pub; at the top: nodes/<name>/

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
    """The content of ``kit.json``."""

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


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_file(folder / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())


def make_dir(path: Path) -> None:
    """Create a kit folder readable by its owner only (0700, whatever the umask)."""
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write a new file (never replacing one): 0600 if ``private``, else 0644. The mode is
    set at creation, so a private key is never readable by others, even for an instant."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
