"""The partner's policy file: what this node agrees to take part in.

A deployed node names it with ``federator node start --policy FILE`` (node config key
``policy``). It is checked before the node trains on any message, so a coordinator cannot
talk a node into a run it did not agree to::

    max_epsilon = 8.0                 # total ε this node's data may ever spend (local DP)
    privacy_delta = 1e-5              # δ at which that total is measured
    privacy_accountant = "rdp"        # or "prv"
    require_secagg = false            # refuse rounds that are not securely aggregated
    allowed_strategies = ["fedavg", "fedprox"]   # omit: any
    allowed_tasks = ["digits-mlp"]               # omit: any built-in or installed task
    allowed_federations = ["acme-study"]         # omit: any

With ``max_epsilon`` set the node also refuses to train without local DP.

A coordinator's own task arrives as a signed *task bundle* (`federator.client.bundle`): its code
runs here only if the policy allows it by name *and* digest, ::

    allowed_tasks = ["digits-mlp", { name = "iris_task:task", sha256 = "3f1c…" }]

or, the weaker choice, accepts any bundle signed by the pinned release key::

    trust_release_key = true
    max_task_bundle_bytes = 1048576              # bigger bundles are refused (default 1 MiB)

Without either, no bundled code runs on this node.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import ConfigError, PolicyRefused
from federator.client.bundle import DEFAULT_MAX_BUNDLE_BYTES
from federator.client.instructions import Instructions
from federator.privacy.accounting import Accountant


class AllowedBundle(BaseModel):
    """One bundled task the partner allows: its name and the sha256 of its bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    privacy_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    privacy_accountant: Accountant = Accountant.RDP
    require_secagg: bool = False
    allowed_strategies: tuple[str, ...] | None = None
    allowed_tasks: tuple[str | AllowedBundle, ...] | None = None
    allowed_federations: tuple[str, ...] | None = None
    trust_release_key: bool = False
    max_task_bundle_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BUNDLE_BYTES


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
    allowed_bundles: frozenset[tuple[str, str]] = frozenset()  # (name, sha256)
    trust_release_key: bool = False
    max_task_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES

    def bundle_problem(self, task: str, digest: str) -> str | None:
        """Why this policy does not run the bundled ``task`` of sha256 ``digest`` (None: it
        does)."""
        if self.trust_release_key or (task, digest) in self.allowed_bundles:
            return None
        return (
            f"task {task!r} comes as a bundle of sha256 {digest}, which this node's policy does "
            f'not allow: pin it with allowed_tasks = [{{ name = "{task}", sha256 = "{digest}" }}] '
            "(or accept every bundle the pinned key signed: trust_release_key = true)"
        )

    def problems(self, instr: Instructions) -> list[str]:
        """What in these instructions this policy does not allow (empty: all allowed)."""
        out: list[str] = []
        for what, allowed, value in (
            ("federation", self.allowed_federations, instr.federation),
            ("strategy", self.allowed_strategies, instr.strategy),
            ("task", None if instr.task_bundle else self.allowed_tasks, instr.task),
        ):
            if allowed is not None and value not in allowed:
                out.append(f"{what} {value!r} is not among the allowed {sorted(allowed)}")
        if instr.task_bundle and (problem := self.bundle_problem(instr.task, instr.task_bundle)):
            out.append(problem)
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


def _names(entries: tuple[str | AllowedBundle, ...] | None) -> frozenset[str] | None:
    """The tasks allowed by name alone (built-in or installed by hand)."""
    return None if entries is None else frozenset(t for t in entries if isinstance(t, str))


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
        allowed_tasks=_names(raw.allowed_tasks),
        allowed_federations=_frozen(raw.allowed_federations),
        allowed_bundles=frozenset(
            (t.name, t.sha256) for t in raw.allowed_tasks or () if isinstance(t, AllowedBundle)
        ),
        trust_release_key=raw.trust_release_key,
        max_task_bundle_bytes=raw.max_task_bundle_bytes,
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
