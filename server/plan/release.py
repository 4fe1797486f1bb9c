"""The ``[release]`` section, checked: the signing key loads and the pinned key matches it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federator import ConfigError
from federator.client.keys import PUBLIC_NAME, key_id, load_private_key, load_public_key
from federator.server.plan.config import ReleaseSection


@dataclass(frozen=True, kw_only=True)
class ReleasePlan:
    """Signed releases are on: who signs, what simulated nodes pin, how many they keep."""

    signing_key: Path
    passphrase_env: str | None
    public_key: Path
    keep: int
    key_id: str
    valid_days: float = 30.0

    def load_signing_key(self) -> Ed25519PrivateKey:
        return load_private_key(self.signing_key, passphrase=_passphrase(self.passphrase_env))


def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(f"release.passphrase_env: the environment variable {env} is not set")
    return value.encode()


def release_plan(section: ReleaseSection) -> ReleasePlan | None:
    """None when releases are off; `ConfigError` naming the key path when keys do not fit."""
    if section.signing_key is None:
        for key in ("passphrase_env", "public_key"):
            if key in section.model_fields_set:
                raise ConfigError(f"release.{key}: set release.signing_key to release models")
        return None
    private_path = Path(section.signing_key).expanduser().resolve()
    public_path = (
        Path(section.public_key).expanduser().resolve()
        if section.public_key
        else private_path.parent / PUBLIC_NAME
    )
    try:
        private = load_private_key(private_path, passphrase=_passphrase(section.passphrase_env))
        public = load_public_key(public_path)
    except ConfigError as err:
        raise ConfigError(f"release: {err}") from None
    if key_id(public) != key_id(private.public_key()):
        raise ConfigError(
            f"release.public_key: {public_path} does not belong to the signing key {private_path}"
        )
    return ReleasePlan(
        signing_key=private_path,
        passphrase_env=section.passphrase_env,
        public_key=public_path,
        keep=section.keep,
        key_id=key_id(public),
        valid_days=section.valid_days,
    )
