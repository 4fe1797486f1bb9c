"""Command-line overrides (``--set key.path=value``) applied to a raw config before validation."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from federator import ConfigError


@dataclass(frozen=True)
class Override:
    """One ``key.path=value`` assignment; ``origin`` says where it came from (for errors)."""

    path: tuple[str, ...]
    value: Any
    origin: str


def parse_override(text: str, *, origin: str = "--set") -> Override:
    """Parse ``a.b=value``. The value is read as a TOML value (``3``, ``0.5``, ``true``,
    ``"x"``, ``[1, 2]``); anything that is not valid TOML is taken as a plain string."""
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ConfigError(
            f"{origin} {text!r}: expected key.path=value, e.g. --set strategy.fraction_train=0.5"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return Override(path=path, value=value, origin=f"{origin} {text}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of ``raw`` with every override written in (later ones win)."""
    out = copy.deepcopy(raw)
    for ov in overrides:
        node = out
        for i, part in enumerate(ov.path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(ov.path[: i + 1])
                raise ConfigError(f"{ov.origin}: {where} is a value, not a section")
            node = child
        node[ov.path[-1]] = ov.value
    return out
