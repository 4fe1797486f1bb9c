"""A partner node's model store: verified, atomic installs, the last K versions, rollback.

Layout under the store root::

    versions/<version>/   weights.safetensors, lineage.json, envelope.json
                          (+ task.zip, task.envelope.json: the task bundle it was trained with)
    current               symlink → versions/<version> (switched with an atomic rename)
    state.json            the highest version ever installed (replay protection)
    tasks/<sha256>/       task bundles, extracted (`federator.client.bundle`)

A release is installed only if its signature verifies with the pinned key, it names this
node's model, it has not expired, it is newer than every version installed before (an older or
re-sent version is a replay), and the files are exactly the signed ones. The highest version
ever installed is ``state.json``'s, and never less than the newest version kept: a store whose
``state.json`` is lost or behind what it keeps is refused (`check_state`) until the partner
restores it, so replay protection never restarts silently. Installation writes into a temporary
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
from datetime import UTC, datetime
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
    expires_at: str | None = None

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the release's validity has run out (``now``: default the clock)."""
        return _expired(self.expires_at, now)


def _expired(expires_at: str | None, now: datetime | None) -> bool:
    if expires_at is None:
        return False
    return (now or datetime.now(UTC)) >= datetime.fromisoformat(expires_at)


def _recorded_high_water(root: Path) -> int | None:
    try:
        return int(json.loads((root / "state.json").read_text())["high_water"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kept(root: Path) -> list[int]:
    versions = root / "versions"
    if not versions.is_dir():
        return []
    return sorted(int(f.name) for f in versions.iterdir() if f.name.isdigit())


def check_store_state(root: Path) -> None:
    """`ReleaseRefused` if the store at ``root`` has lost its ``state.json``, or it is behind
    the versions kept: replay protection would otherwise restart from whatever is left."""
    kept, recorded = _kept(root), _recorded_high_water(root)
    if not kept or (recorded is not None and recorded >= kept[-1]):
        return
    problem = "is missing or unreadable" if recorded is None else f"says {recorded}"
    raise ReleaseRefused(
        f"{root / 'state.json'} {problem}, but versions up to {kept[-1]} are kept: replay "
        "protection cannot tell which versions this node already installed. Restore "
        "state.json from a backup, or set the highest version this node ever installed: "
        f"federator node init --store {root} --high-water N"
    )


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

    def _kept(self) -> list[int]:
        return _kept(self.root)

    def high_water(self) -> int:
        """The highest version ever installed here (0 if none): ``state.json``'s, and never
        less than the newest version kept."""
        return max(_recorded_high_water(self.root) or 0, *self._kept(), 0)

    def check_state(self) -> None:
        """`check_store_state` of this store."""
        check_store_state(self.root)

    def repair_high_water(self, version: int) -> None:
        """Record ``version`` as the highest ever installed (the partner's word, after a lost
        ``state.json``); never below a version kept."""
        if version < max(self._kept(), default=0):
            raise ReleaseRefused(
                f"--high-water {version} is below version {max(self._kept())} kept here"
            )
        self._set_high_water(version)

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
        return [self.describe(v, current=current) for v in sorted(self._kept(), reverse=True)]

    def describe(self, version: int, *, current: int | None = None) -> StoredVersion:
        """What the signed statement of a kept ``version`` says (verified again)."""
        p = self._statement(version).predicate
        return StoredVersion(
            version=p.version,
            round=p.round,
            federation=p.federation,
            created_at=p.created_at,
            current=p.version == (self.current_version() if current is None else current),
            expires_at=p.expires_at,
        )

    def task(self, version: int | None = None) -> Task:
        """The task a kept release (default: the current one) was trained for: a built-in by
        name, or the task bundle kept with the version (the very code it was trained with)."""
        statement, files = self._verified(self._require_current() if version is None else version)
        if statement.predicate.task_bundle is None:
            return resolve_task(statement.predicate.task)
        bundle = bundle_from_files(files, pinned=self._pinned, max_bytes=None)
        assert bundle is not None  # the release's own check at install
        return import_bundled(bundle, self.root / TASKS_FOLDER)

    def load_model(
        self, task: Task | None = None, *, version: int | None = None
    ) -> torch.nn.Module:
        """A kept model (default: the current one), verified and loaded from safetensors into
        the task's model, in eval mode."""
        version = self._require_current() if version is None else version
        self._statement(version)  # digests still match what was signed
        model = (task or self.task(version)).build_model()
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
        self,
        envelope: str,
        files: Mapping[str, bytes],
        *,
        policy: NodePolicy | None = None,
        now: datetime | None = None,
    ) -> int:
        """Verify and install a release; returns its version. `ReleaseRefused` (or its
        subclass `SignatureInvalid`) says why not, `TaskBundleRefused` if its task bundle may
        not run here (``policy``: the node's); either leaves the store unchanged. ``now``:
        the time its expiry is judged at (default: the clock)."""
        self.check_state()
        statement = open_release(envelope, self._pinned)
        check_files(statement, files)  # integrity first: a tampered release is reported as such
        p = statement.predicate
        if p.model != self.model:
            raise ReleaseRefused(
                f"the release is for model {p.model!r}, this node installs {self.model!r}"
            )
        if _expired(p.expires_at, now):
            raise ReleaseRefused(
                f"version {p.version} expired at {p.expires_at} (released {p.created_at}): "
                "a stale model is not installed"
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
