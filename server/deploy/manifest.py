"""Writing the kits: the coordinator kit's file layout, ``kit.json`` and owner-only files.

The manifest itself (`Manifest`, ``kit.json``) and the node kit's files are declared where a
node reads them, `federator.client.kit`; the coordinator's own files are named here.
"""

from __future__ import annotations

import os
from pathlib import Path

from federator.client.kit import MANIFEST, Manifest

CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
NODES_DIR = "nodes"  # in the coordinator kit: nodes/<name>.pub; at the top: nodes/<name>/


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
