"""Task bundles: a user's own task code, packed by the coordinator, signed, pinned by partners.

A federation that trains its own task (``[task] name = "module:object"``) does not ask anyone
to install that module by hand. ``federator run`` packs it — the module file, or its package
folder — into a *task bundle*: a zip archive with sorted names and fixed timestamps, so the same
source always gives the same bytes and the same sha256. The bundle is signed like a release: an
in-toto statement whose one subject is ``task.zip`` and whose predicate names the task, its
top-level module, the third-party packages it needs (they must already be installed where it
runs: a bundle carries no dependencies) and the federation, in a DSSE envelope signed with the
federation's release key.

Running code a coordinator sent is the largest trust a partner gives, so a node opens a bundle
in this order and stops at the first problem with `TaskBundleRefused` naming it, *before any
code of it is imported*:

1. size — the archive is no bigger than the node's limit (``max_task_bundle_bytes``);
2. signature — the envelope verifies with the node's pinned release key;
3. integrity — the archive's sha256 is the signed one;
4. policy — the partner allows this task by name *and* digest, or trusts every bundle its
   pinned key signed (the weaker choice; `federator.client.node_policy`);
5. packages — every declared requirement is installed on the node, at a fitting version;
6. archive — only regular files under the task's own top-level module, bounded in size.

Only then is it extracted into the node's store (``tasks/<sha256>/``) and imported from there.
A released model names its bundle's digest and carries the bundle, so the node keeps the exact
code the model was trained with beside it (`federator.client.store`).
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from federator import SignatureInvalid, TaskBundleRefused, TaskError
from federator.client.release import (
    Subject,
    build_statement,
    open_envelope,
    parse_signed,
    sha256,
    sign_statement,
)
from federator.client.tasks import Task, resolve_task
from federator.client.wire import TASK_BUNDLE_KEY, TASK_ENVELOPE_KEY

TASK_ARCHIVE = "task.zip"
TASK_ENVELOPE = "task.envelope.json"
BUNDLE_FILES = (TASK_ARCHIVE, TASK_ENVELOPE)  # what a release carries of a bundle
TASK_PREDICATE_TYPE = "https://federator.dev/task-bundle/v1"
DEFAULT_MAX_BUNDLE_BYTES = 1 << 20  # 1 MiB: code, not data
_MAX_UNPACKED_BYTES = 64 << 20
_MAX_FILES = 2000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache"})

_Strict = ConfigDict(extra="forbid", frozen=True)
ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class BundlePredicate(BaseModel):
    """What a task bundle is: the task it holds and what it needs from the node."""

    model_config = _Strict
    task: Annotated[str, Field(min_length=3)]  # the config's "module:object"
    module: ModuleName  # the one top-level module or package the archive holds
    requires: tuple[PipRequirement, ...] = ()  # must be installed where it runs
    federation: str
    created_at: str


class BundleStatement(BaseModel):
    """The signed statement of a task bundle: one subject, ``task.zip``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: Annotated[list[Subject], Field(min_length=1, max_length=1)]
    predicateType: Literal["https://federator.dev/task-bundle/v1"]
    predicate: BundlePredicate


@dataclass(frozen=True)
class TaskBundle:
    """A task bundle whose signature and digest have been checked (or that was just signed)."""

    archive: bytes = field(repr=False)
    envelope: str = field(repr=False)
    digest: str
    predicate: BundlePredicate

    @property
    def task(self) -> str:
        return self.predicate.task

    def files(self) -> dict[str, bytes]:
        """The bundle as the two files a release carries beside the weights."""
        return {TASK_ARCHIVE: self.archive, TASK_ENVELOPE: self.envelope.encode()}


def _pep508(text: str) -> str:
    try:
        Requirement(text)
    except InvalidRequirement as err:
        raise ValueError(f"{text!r} is not a PEP 508 requirement ({err})") from None
    return text


# A package a bundled task needs installed where it runs ("scikit-learn>=1.5").
PipRequirement = Annotated[str, AfterValidator(_pep508)]


# -- packing (the coordinator) ---------------------------------------------------------------


def _source_files(source: Path, module: str) -> list[tuple[str, Path]]:
    """(name in the archive, file) for a module file or a package folder."""
    if source.is_file():
        if source.name != f"{module}.py":
            raise TaskError(f"task source {source} is not the module {module!r} ({module}.py)")
        return [(source.name, source)]
    if not (source / "__init__.py").is_file() or source.name != module:
        raise TaskError(f"task source {source} is not the package {module!r} (with __init__.py)")
    out: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            if path.is_symlink():
                raise TaskError(f"task source {path} is a symbolic link: bundles hold files only")
            out.append((str(PurePosixPath(module) / path.relative_to(source).as_posix()), path))
    return out


def pack_source(source: Path, *, module: str) -> bytes:
    """The archive of ``source`` (``module.py`` or the package folder ``module/``): the same
    files always give the same bytes, so the digest names the code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, path in _source_files(source, module):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def sign_bundle(archive: bytes, predicate: BundlePredicate, key: Ed25519PrivateKey) -> TaskBundle:
    """The signed bundle of ``archive`` (the coordinator's release key signs it)."""
    statement = build_statement(
        {TASK_ARCHIVE: archive}, predicate, predicate_type=TASK_PREDICATE_TYPE
    )
    envelope = sign_statement(statement, key)
    return TaskBundle(archive, envelope, sha256(archive), predicate)


# -- opening (a node, the coordinator's ServerApp, `node predict`) ----------------------------


def open_bundle(
    envelope: str, archive: bytes, *, pinned: Ed25519PublicKey, max_bytes: int | None
) -> TaskBundle:
    """Steps 1–3 of the module docstring: size, signature, integrity."""
    if max_bytes is not None and len(archive) > max_bytes:
        raise TaskBundleRefused(
            f"the task bundle is {len(archive):,} bytes, more than this node's limit of "
            f"{max_bytes:,} (max_task_bundle_bytes in its policy)"
        )
    try:
        statement = parse_signed(
            open_envelope(envelope, pinned, what="task bundle"), BundleStatement
        )
    except SignatureInvalid as err:
        raise TaskBundleRefused(f"the task bundle is refused: {err}") from None
    subject = statement.subject[0]
    if subject.name != TASK_ARCHIVE:
        raise TaskBundleRefused(f"the task bundle's statement names {subject.name!r}, not task.zip")
    digest = sha256(archive)
    if digest != subject.digest.sha256:
        raise TaskBundleRefused(
            f"task.zip does not match its signed sha256 digest (altered or truncated): "
            f"got {digest}, signed {subject.digest.sha256}"
        )
    return TaskBundle(archive, envelope, digest, statement.predicate)


def missing_requirements(requires: tuple[str, ...]) -> list[str]:
    """Step 5: each requirement not met here, as text naming it (empty: all installed)."""
    out = []
    for text in requires:
        req = Requirement(text)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{req.name} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{text} (installed: {installed})")
    return out


def check_needs(bundle: TaskBundle) -> None:
    """`TaskBundleRefused` naming every package the bundle needs and this machine lacks."""
    if missing := missing_requirements(bundle.predicate.requires):
        raise TaskBundleRefused(
            f"task {bundle.task!r} needs packages this machine does not have: "
            f"{', '.join(missing)} (install them; a bundle carries no dependencies)"
        )


def _safe_members(archive: zipfile.ZipFile, module: str) -> list[zipfile.ZipInfo]:
    """Step 6: the archive's entries, each a regular file under the task's own module."""
    members = archive.infolist()
    if len(members) > _MAX_FILES:
        raise TaskBundleRefused(
            f"the task bundle holds {len(members)} files (at most {_MAX_FILES})"
        )
    if sum(m.file_size for m in members) > _MAX_UNPACKED_BYTES:
        raise TaskBundleRefused("the task bundle unpacks to more than 64 MiB")
    for m in members:
        path = PurePosixPath(m.filename)
        mode = m.external_attr >> 16
        top = path.parts[0] if path.parts else ""
        if (
            path.is_absolute()
            or ".." in path.parts
            or "\\" in m.filename
            or m.is_dir()
            or (mode and (mode & 0o170000) not in (0, 0o100000))
            or top not in (module, f"{module}.py")
        ):
            raise TaskBundleRefused(
                f"the task bundle holds {m.filename!r}, outside its module {module!r}"
            )
    return members


def extract_bundle(bundle: TaskBundle, root: Path) -> Path:
    """The folder ``root/<sha256>`` holding the bundle's files (extracted once, atomically)."""
    final = root / bundle.digest
    if (final / TASK_ENVELOPE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        with zipfile.ZipFile(io.BytesIO(bundle.archive)) as archive:
            for member in _safe_members(archive, bundle.predicate.module):
                target = tmp / "src" / member.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
        (tmp / TASK_ENVELOPE).write_text(bundle.envelope)
        _publish(tmp, final)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TaskBundleRefused(f"the task bundle is not a readable zip archive ({err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished extraction into place; another process that got there first wins
    (both extracted the same verified bytes), and a leftover without its envelope — an
    extraction that never finished — is replaced."""
    if (final / TASK_ENVELOPE).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if final.exists():
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / TASK_ENVELOPE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def import_bundled(bundle: TaskBundle, root: Path) -> Task:
    """The bundle's task, imported from its extracted folder under ``root`` — and from there
    only: a module of that name imported from elsewhere is an error, not a silent swap."""
    module = bundle.predicate.module
    if module in sys.stdlib_module_names or module == "federator":
        raise TaskBundleRefused(f"the task bundle's module {module!r} would shadow {module!r}")
    check_needs(bundle)
    src = extract_bundle(bundle, root) / "src"
    loaded = sys.modules.get(module)
    if loaded is not None and not _within(loaded, src):
        raise TaskError(
            f"task {bundle.task!r}: module {module!r} is already imported from "
            f"{getattr(loaded, '__file__', '?')}, not from its bundle {bundle.digest[:12]}"
        )
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    task = resolve_task(bundle.task)
    if not _within(sys.modules[module], src):
        raise TaskError(f"task {bundle.task!r}: {module!r} did not load from its bundle")
    return task


def _within(module: object, folder: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve().is_relative_to(folder.resolve())


def bundle_from_files(
    files: Mapping[str, bytes], *, pinned: Ed25519PublicKey, max_bytes: int | None
) -> TaskBundle | None:
    """The bundle among a release's files (None if it carries none)."""
    if TASK_ARCHIVE not in files and TASK_ENVELOPE not in files:
        return None
    if TASK_ARCHIVE not in files or TASK_ENVELOPE not in files:
        raise TaskBundleRefused("the release carries half a task bundle")
    return open_bundle(
        files[TASK_ENVELOPE].decode(), files[TASK_ARCHIVE], pinned=pinned, max_bytes=max_bytes
    )


def bundle_from_run_config(
    run_config: Mapping[str, object], *, pinned: Ed25519PublicKey, max_bytes: int | None
) -> TaskBundle:
    """The run's bundle, as `federator run` put it in the run config (`federator.client.wire`)."""
    archive, envelope = run_config.get(TASK_BUNDLE_KEY), run_config.get(TASK_ENVELOPE_KEY)
    if not isinstance(archive, str) or not archive or not isinstance(envelope, str):
        raise TaskBundleRefused("the run names a task bundle but its run config carries none")
    try:
        raw, env = base64.b64decode(archive, validate=True), base64.b64decode(envelope).decode()
    except (ValueError, UnicodeDecodeError):
        raise TaskBundleRefused("the run config's task bundle is not base64 text") from None
    return open_bundle(env, raw, pinned=pinned, max_bytes=max_bytes)


def bundle_run_config(bundle: TaskBundle) -> dict[str, str]:
    """The run config entries that carry ``bundle`` (the inverse of `bundle_from_run_config`)."""
    return {
        TASK_BUNDLE_KEY: base64.b64encode(bundle.archive).decode(),
        TASK_ENVELOPE_KEY: base64.b64encode(bundle.envelope.encode()).decode(),
    }


__all__ = [
    "BUNDLE_FILES",
    "DEFAULT_MAX_BUNDLE_BYTES",
    "TASK_ARCHIVE",
    "TASK_ENVELOPE",
    "BundlePredicate",
    "PipRequirement",
    "TaskBundle",
    "bundle_from_files",
    "bundle_from_run_config",
    "bundle_run_config",
    "check_needs",
    "extract_bundle",
    "import_bundled",
    "missing_requirements",
    "open_bundle",
    "pack_source",
    "sign_bundle",
]
