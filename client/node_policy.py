"""The partner's policy file: what this node agrees to take part in.

A deployed node names it with ``federator node start --policy FILE`` (node config key
``policy``). It is checked before the node trains on any message, so a coordinator cannot
talk a node into a run it did not agree to::

    max_epsilon = 8.0                 # total ε this node's data may ever spend (local DP)
    privacy_delta = 1e-5              # δ at which that total is measured
    privacy_accountant = "rdp"        # or "prv"
    require_secagg = false            # refuse rounds that are not securely aggregated
    allowed_strategies = ["fedavg", "fedprox"]   # omit: any
    allowed_tasks = ["digits-mlp"]               # omit: any
    allowed_federations = ["acme-study"]         # omit: any

With ``max_epsilon`` set the node also refuses to train without local DP.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import ConfigError, PolicyRefused
from federator.client.instructions import Instructions
from federator.privacy.accounting import Accountant


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    privacy_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    privacy_accountant: Accountant = Accountant.RDP
    require_secagg: bool = False
    allowed_strategies: tuple[str, ...] | None = None
    allowed_tasks: tuple[str, ...] | None = None
    allowed_federations: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class NodePolicy:
    """A validated policy file (see the module docstring)."""

    max_epsilon: float | None = None
    privacy_delta: float = 1e-5
    privacy_accountant: Accountant = Accountant.RDP
    require_secagg: bool = False
    allowed_strategies: frozenset[str] | None = None
    allowed_tasks: frozenset[str] | None = None
    allowed_federations: frozenset[str] | None = None

    def problems(self, instr: Instructions) -> list[str]:
        """What in these instructions this policy does not allow (empty: all allowed)."""
        out: list[str] = []
        for what, allowed, value in (
            ("federation", self.allowed_federations, instr.federation),
            ("strategy", self.allowed_strategies, instr.strategy),
            ("task", self.allowed_tasks, instr.task),
        ):
            if allowed is not None and value not in allowed:
                out.append(f"{what} {value!r} is not among the allowed {sorted(allowed)}")
        if self.require_secagg and not instr.secagg:
            out.append("this node requires secure aggregation (SecAgg+) and the run has none")
        if self.max_epsilon is not None and instr.local_dp is None:
            out.append(
                f"this node only trains with local DP (max ε {self.max_epsilon}) and the run "
                "has none"
            )
        return out

    def check(self, instr: Instructions) -> None:
        """`PolicyRefused` naming every violation."""
        if problems := self.problems(instr):
            raise PolicyRefused("the node's policy refuses this run: " + "; ".join(problems))


def _frozen(values: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def parse_policy(text: str, *, source: str) -> NodePolicy:
    """A policy from TOML text; `ConfigError` naming the bad key."""
    try:
        raw = _PolicyFile.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None
    return NodePolicy(
        max_epsilon=raw.max_epsilon,
        privacy_delta=raw.privacy_delta,
        privacy_accountant=raw.privacy_accountant,
        require_secagg=raw.require_secagg,
        allowed_strategies=_frozen(raw.allowed_strategies),
        allowed_tasks=_frozen(raw.allowed_tasks),
        allowed_federations=_frozen(raw.allowed_federations),
    )


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int) -> NodePolicy:
    return parse_policy(Path(path).read_text(encoding="utf-8"), source=path)


def load_policy(path: Path) -> NodePolicy:
    """The policy at ``path`` (re-read when the file changes); `ConfigError` if missing or
    invalid — a node whose policy cannot be read does not train."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as err:
        raise ConfigError(f"node policy {path}: cannot read ({err.strerror})") from None
    return _cached(str(path), mtime)


__all__ = ["NodePolicy", "load_policy", "parse_policy"]
