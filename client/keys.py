"""Release keys: the Ed25519 pair a federation signs its releases with.

The coordinator keeps the private key (written 0600, optionally passphrase-encrypted); every
partner pins the public key in its own node settings, never taking it from the coordinator at
run time. A key's id is the first 16 hex digits of the sha256 of its raw public bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federator import ConfigError, SignatureInvalid

PRIVATE_NAME = "release.key"
PUBLIC_NAME = "release.pub"


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPaths:
    """Where `generate_keys` wrote the pair."""

    private: Path
    public: Path
    key_id: str


def generate_keys(
    out: Path, *, passphrase: bytes | None = None, overwrite: bool = False
) -> KeyPaths:
    """Create ``release.key`` (0600) and ``release.pub`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise ConfigError(f"{out} already holds a release key; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPaths(private=private_path, public=public_path, key_id=key_id(key.public_key()))


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The signing key at ``path``; `ConfigError` naming what is wrong otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the release signing key ({err.strerror})") from None
    if path.stat().st_mode & 0o077:
        raise ConfigError(
            f"{path}: the release signing key is readable by others; run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise ConfigError(
            f"{path}: the key is passphrase-protected; set its passphrase (release.passphrase_env)"
        ) from None
    except ValueError as err:
        raise ConfigError(f"{path}: not a usable private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A pinned public key (PEM); `ConfigError` if missing or not Ed25519."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the pinned release key ({err.strerror})") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """`SignatureInvalid` unless ``signature`` is ``public``'s signature of ``message``."""
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise SignatureInvalid("the signature does not verify with the pinned key") from None
