"""A partner node's model store: verified, atomic installs, the last K versions, rollback.

Layout under the store root::

    versions/<version>/   weights.safetensors, lineage.json, envelope.json
                          (+ task.zip, task.envelope.json: the task bundle it was trained with)
    current               symlink → versions/<version> (switched with an atomic rename)
    state.json            the highest version ever installed (replay protection)
    tasks/<sha256>/       task bundles, extracted (`federator.client.bundle`)

A release is installed only if its signature verifies with the pinned key, it names this
node's model, it is newer than every version installed before (an older or re-sent version is
a replay), and the files are exactly the signed ones. Installation writes into a temporary
folder, fsyncs, renames, then switches ``current``: a crash leaves the old model in place.
The installed model is never unpickled: weights load from safetensors into the task's model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federator import ReleaseRefused, SignatureInvalid, TaskBundleRefused
from federator.client.bundle import (
    DEFAULT_MAX_BUNDLE_BYTES,
    TaskBundle,
    bundle_from_files,
    check_needs,
    import_bundled,
)
from federator.client.keys import load_public_key
from federator.client.node_policy import NodePolicy
from federator.client.release import Statement, check_files, open_release
from federator.client.tasks import Task, resolve_task
from federator.client.weights import load_arrays, load_safetensors

ENVELOPE = "envelope.json"
TASKS_FOLDER = "tasks"


@dataclass(frozen=True)
class StoredVersion:
    """One version held by the store."""

    version: int
    round: int
    federation: str
    created_at: str
    current: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ModelStore:
    """Installed releases of one model on one node."""

    def __init__(
        self, root: Path, *, pinned_key: Ed25519PublicKey, model: str, keep: int = 3
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.root = root
        self._pinned = pinned_key
        self.model = model
        self.keep = keep
        (root / "versions").mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, root: Path, *, pinned_key: Path, model: str, keep: int = 3) -> ModelStore:
        """A store whose settings are remembered in ``store.json`` for `reopen`."""
        store = cls(root, pinned_key=load_public_key(pinned_key), model=model, keep=keep)
        settings = {"pinned_key": str(pinned_key.resolve()), "model": model, "keep": keep}
        path = root / "store.json"
        if not path.is_file() or json.loads(path.read_text()) != settings:
            tmp = root / ".store.json.tmp"
            _write_durably(tmp, json.dumps(settings, indent=2).encode())
            os.replace(tmp, path)
        return store

    @classmethod
    def reopen(cls, root: Path) -> ModelStore:
        """The store at ``root`` with the settings the node used (for the node CLI)."""
        try:
            settings = json.loads((root / "store.json").read_text())
        except (OSError, ValueError):
            raise ReleaseRefused(f"{root} is not a Federator model store (no store.json)") from None
        return cls.open(
            root,
            pinned_key=Path(settings["pinned_key"]),
            model=settings["model"],
            keep=int(settings["keep"]),
        )

    # -- reading -------------------------------------------------------------------------

    def current_version(self) -> int | None:
        """The installed version in use, if any."""
        link = self.root / "current"
        if not link.is_symlink():
            return None
        return int(Path(os.readlink(link)).name)

    def high_water(self) -> int:
        """The highest version ever installed here (0 if none)."""
        try:
            return int(json.loads((self.root / "state.json").read_text())["high_water"])
        except (OSError, ValueError, KeyError):
            return 0

    def _statement(self, version: int) -> Statement:
        return self._verified(version)[0]

    def _verified(self, version: int) -> tuple[Statement, dict[str, bytes]]:
        folder = self.root / "versions" / str(version)
        statement = open_release((folder / ENVELOPE).read_text(), self._pinned)
        files = {
            s.name: (folder / s.name).read_bytes()
            for s in statement.subject
            if (folder / s.name).is_file()
        }
        check_files(statement, files)
        return statement, files

    def versions(self) -> list[StoredVersion]:
        """Stored versions, newest first (each re-verified against its signed statement)."""
        current = self.current_version()
        out = []
        for folder in (self.root / "versions").iterdir():
            if not folder.name.isdigit():
                continue
            p = self._statement(int(folder.name)).predicate
            out.append(
                StoredVersion(
                    version=p.version,
                    round=p.round,
                    federation=p.federation,
                    created_at=p.created_at,
                    current=p.version == current,
                )
            )
        return sorted(out, key=lambda v: v.version, reverse=True)

    def task(self) -> Task:
        """The task the current release was trained for: a built-in by name, or the task
        bundle kept with the version (the very code it was trained with)."""
        statement, files = self._verified(self._require_current())
        if statement.predicate.task_bundle is None:
            return resolve_task(statement.predicate.task)
        bundle = bundle_from_files(files, pinned=self._pinned, max_bytes=None)
        assert bundle is not None  # the release's own check at install
        return import_bundled(bundle, self.root / TASKS_FOLDER)

    def load_model(self, task: Task | None = None) -> torch.nn.Module:
        """The current model, verified and loaded from safetensors into the task's model."""
        version = self._require_current()
        self._statement(version)  # digests still match what was signed
        model = (task or self.task()).build_model()
        load_arrays(
            model, load_safetensors(self.root / "versions" / str(version) / "weights.safetensors")
        )
        model.eval()
        return model

    def _require_current(self) -> int:
        version = self.current_version()
        if version is None:
            raise ReleaseRefused(f"no model is installed in {self.root}")
        return version

    # -- changing ------------------------------------------------------------------------

    def install(
        self, envelope: str, files: Mapping[str, bytes], *, policy: NodePolicy | None = None
    ) -> int:
        """Verify and install a release; returns its version. `ReleaseRefused` (or its
        subclass `SignatureInvalid`) says why not, `TaskBundleRefused` if its task bundle may
        not run here (``policy``: the node's); either leaves the store unchanged."""
        statement = open_release(envelope, self._pinned)
        check_files(statement, files)  # integrity first: a tampered release is reported as such
        p = statement.predicate
        if p.model != self.model:
            raise ReleaseRefused(
                f"the release is for model {p.model!r}, this node installs {self.model!r}"
            )
        self._check_bundle(statement, files, policy)
        if p.version <= self.high_water():
            raise ReleaseRefused(
                f"version {p.version} is not newer than version "
                f"{self.high_water()} already installed here (replay)"
            )
        versions = self.root / "versions"
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            for name, data in files.items():
                _write_durably(tmp / name, data)
            _write_durably(tmp / ENVELOPE, envelope.encode())
            _fsync_dir(tmp)
            final = versions / str(p.version)
            if final.exists():
                shutil.rmtree(final)  # a leftover of an install that never became current
            os.rename(tmp, final)
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point_current_to(p.version)
        self._set_high_water(p.version)
        self._prune()
        return p.version

    def _check_bundle(
        self, statement: Statement, files: Mapping[str, bytes], policy: NodePolicy | None
    ) -> TaskBundle | None:
        """The release's task bundle, if it has one, once it is intact, is the one the
        release names, may run under ``policy`` and has what it needs installed."""
        p = statement.predicate
        limit = policy.max_task_bundle_bytes if policy else DEFAULT_MAX_BUNDLE_BYTES
        bundle = bundle_from_files(files, pinned=self._pinned, max_bytes=limit)
        if p.task_bundle is None:
            if bundle is not None:
                raise SignatureInvalid("the release carries a task bundle its statement omits")
            return None
        if bundle is None or (bundle.digest, bundle.task) != (p.task_bundle, p.task):
            raise SignatureInvalid(
                f"the release names task bundle {p.task_bundle} of {p.task!r} and does not carry it"
            )
        if policy is None:
            raise TaskBundleRefused(
                f"the release's task {p.task!r} comes as a bundle and this node has no policy "
                "file allowing it"
            )
        if problem := policy.bundle_problem(p.task, bundle.digest):
            raise TaskBundleRefused(problem)
        check_needs(bundle)
        return bundle

    def rollback(self, to: int | None = None) -> int:
        """Switch ``current`` to version ``to`` (default: the newest older one); returns it."""
        current = self._require_current()
        stored = sorted(int(f.name) for f in (self.root / "versions").iterdir() if f.name.isdigit())
        if to is None:
            older = [v for v in stored if v < current]
            if not older:
                raise ReleaseRefused(f"no version older than {current} is kept in {self.root}")
            to = older[-1]
        if to not in stored:
            raise ReleaseRefused(f"version {to} is not in the store (kept: {stored})")
        self._statement(to)  # verify before switching
        self._point_current_to(to)
        return to

    def _point_current_to(self, version: int) -> None:
        tmp_link = self.root / f".current-{os.getpid()}"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(Path("versions") / str(version), tmp_link)
        os.replace(tmp_link, self.root / "current")
        _fsync_dir(self.root)

    def _set_high_water(self, version: int) -> None:
        tmp = self.root / ".state.json.tmp"
        _write_durably(tmp, json.dumps({"high_water": max(version, self.high_water())}).encode())
        os.replace(tmp, self.root / "state.json")
        _fsync_dir(self.root)

    def _prune(self) -> None:
        current = self.current_version()
        stored = sorted(
            (int(f.name) for f in (self.root / "versions").iterdir() if f.name.isdigit()),
            reverse=True,
        )
        for version in stored[self.keep :]:
            if version != current:
                shutil.rmtree(self.root / "versions" / str(version))
