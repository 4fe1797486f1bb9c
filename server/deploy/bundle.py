"""Packing a federation's own task for a deployment (`federator run`, `federator bundle`).

A built-in task needs nothing: every node has Federator. A task of the user's own
(``[task] name = "module:object"``) is packed into a signed task bundle
(`federator.client.bundle`) that travels in the run config to the coordinator's ServerApp and
to every node, which runs it only if its partner's policy allows it. Everything that can be
wrong with it is found here, before anything is submitted: a module that cannot be found, a
dataset outside the bundle, a requirement the coordinator itself lacks, a bundle too big, no
release key to sign with.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federator import ConfigError
from federator.client.bundle import (
    BundlePredicate,
    TaskBundle,
    missing_requirements,
    pack_source,
    sign_bundle,
)
from federator.client.tasks import TASKS
from federator.server.plan import FederationPlan
from federator.server.plan.config import TaskSection

# The coordinator's own ceiling (a node's policy sets its own, 1 MiB by default).
MAX_PACKED_BYTES = 16 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def task_module(ref: str) -> str:
    """The top-level module of a ``"package.module:object"`` reference."""
    return ref.partition(":")[0].split(".")[0]


def task_source(section: TaskSection, *, config: Path) -> Path:
    """The file or package folder to pack: ``[task] source`` (relative to the config), else
    wherever the task's top-level module imports from (the config's folder is on the path)."""
    module = task_module(section.name)
    if section.source is not None:
        source = (config.parent / section.source).resolve()
        if not source.exists():
            raise ConfigError(f"task.source: {source} does not exist")
        return source
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"task.name: module {module!r} is neither next to the config nor installed; "
            "set task.source to its file or package folder"
        )
    origin = Path(spec.origin)
    return origin.parent if spec.submodule_search_locations else origin


def _check_dataset(plan: FederationPlan, module: str) -> None:
    dataset = plan.data.dataset
    if ":" in dataset and task_module(dataset) != module:
        raise ConfigError(
            f"data.dataset {dataset!r} lives in module {task_module(dataset)!r}, outside the "
            f"task's bundle ({module!r}): keep the task and its dataset in one module or package"
        )


def pack_task(
    plan: FederationPlan,
    raw: Mapping[str, Any],
    *,
    config: Path,
    now: Callable[[], str] = _now,
) -> TaskBundle | None:
    """The signed bundle of ``plan``'s task (None for a built-in); `ConfigError` naming
    what stops it."""
    section = TaskSection.model_validate(raw["task"])
    if section.name in TASKS:
        if section.source is not None or section.requires:
            raise ConfigError("task.source / task.requires: only for a task of your own")
        return None
    module = task_module(section.name)
    _check_dataset(plan, module)
    if missing := missing_requirements(section.requires):
        raise ConfigError(f"task.requires: not installed here either: {', '.join(missing)}")
    if plan.release is None:
        raise ConfigError(
            f"task {section.name!r} travels to the nodes as a signed bundle: set "
            "release.signing_key (the federation's release key) to sign it"
        )
    archive = pack_source(task_source(section, config=config), module=module)
    if len(archive) > MAX_PACKED_BYTES:
        raise ConfigError(
            f"task bundle of {section.name!r} is {len(archive):,} bytes (at most "
            f"{MAX_PACKED_BYTES:,}): bundle code, and let nodes load data from their own disk"
        )
    predicate = BundlePredicate(
        task=section.name,
        module=module,
        requires=section.requires,
        federation=plan.name,
        created_at=now(),
    )
    return sign_bundle(archive, predicate, plan.release.load_signing_key())


def describe(bundle: TaskBundle) -> list[tuple[str, str]]:
    """Rows for the terminal: what travels, and the policy line a partner pins it with."""
    p = bundle.predicate
    return [
        ("task", p.task),
        ("sha256", bundle.digest),
        ("size", f"{len(bundle.archive):,} bytes (zip of {p.module!r})"),
        ("nodes must have", ", ".join(p.requires) or "nothing beyond Federator"),
        ("partners pin it with", f'{{ name = "{p.task}", sha256 = "{bundle.digest}" }}'),
    ]


__all__ = ["MAX_PACKED_BYTES", "describe", "pack_task", "task_module", "task_source"]
