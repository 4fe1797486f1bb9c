"""The model in use, swapped atomically when the store's ``current`` moves.

The node installs releases into its store (`federator.client.store`) whenever the coordinator
pushes one; the service never writes there. `ModelHolder.refresh` looks at ``current`` and,
when it points at another version, loads that version completely — verified, built, weights
in — *before* replacing the one reference requests read. A request therefore always sees one
whole model, old or new, and no request fails during a swap. A version that does not load
(altered files, a task whose code raises) is reported and not retried; the service keeps
serving the model it had. A store that cannot be read (moved, switched underneath) leaves the
model in place too, and says so in `problem`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from federator.client.serving.model import ServedModel, load_served
from federator.client.store import ModelStore

Loader = Callable[[ModelStore, int], ServedModel]


class Change(StrEnum):
    """What a refresh did."""

    NONE = "none"  # current is the version in use (or one that failed before)
    SWAPPED = "swapped"  # a new version is in use
    FAILED = "failed"  # current points at a version that did not load; the old one stays
    UNREADABLE = "unreadable"  # the store could not be read; the old one stays


@dataclass(frozen=True)
class Refresh:
    """A refresh's outcome: the change, the versions involved, and why, if it failed."""

    change: Change
    serving: int | None
    wanted: int | None = None
    reason: str = ""


def _load(store: ModelStore, version: int) -> ServedModel:
    return load_served(store, version)


class ModelHolder:
    """Holds the served model; `refresh` swaps it for the store's current version."""

    def __init__(self, store: ModelStore, *, loader: Loader = _load) -> None:
        self._store = store
        self._loader = loader
        self._model: ServedModel | None = None
        self._failed: dict[int, str] = {}
        self._problem = ""
        self._lock = threading.Lock()  # one refresh at a time; reads take no lock

    @property
    def model(self) -> ServedModel | None:
        """The model requests use now (one reference read: always a whole model)."""
        return self._model

    @property
    def problem(self) -> str:
        """Why the store's current version is not the one served, if it is not ("" if fine)."""
        return self._problem

    def refresh(self) -> Refresh:
        """Serve the store's current version if it is not served yet and it loads."""
        with self._lock:
            serving = self._model.version if self._model else None
            try:
                wanted = self._store.current_version()
            except (OSError, ValueError) as err:
                self._problem = f"the store {self._store.root} cannot be read ({err})"
                return Refresh(Change.UNREADABLE, serving, reason=self._problem)
            if wanted is None or wanted == serving:
                self._problem = "" if wanted == serving else self._problem
                return Refresh(Change.NONE, serving, wanted)
            if wanted in self._failed:
                return Refresh(Change.NONE, serving, wanted, self._failed[wanted])
            try:
                model = self._loader(self._store, wanted)
            except Exception as err:  # noqa: BLE001 - a task's own code may raise anything
                reason = f"version {wanted} does not load: {type(err).__name__}: {err}"
                self._failed[wanted] = self._problem = reason
                return Refresh(Change.FAILED, serving, wanted, reason)
            self._model, self._problem = model, ""
            return Refresh(Change.SWAPPED, wanted, wanted)


class Watcher:
    """A daemon thread that refreshes ``holder`` every ``interval`` seconds and hands each
    outcome that changed something to ``report`` (a problem once, not every interval)."""

    def __init__(
        self,
        holder: ModelHolder,
        *,
        interval: float,
        report: Callable[[Refresh], None],
    ) -> None:
        self._holder = holder
        self._interval = interval
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="federator-serve-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        last: Refresh | None = None
        while not self._stop.wait(self._interval):
            outcome = self._holder.refresh()
            if outcome.change is not Change.NONE and outcome != last:
                self._report(outcome)
            last = outcome


__all__ = ["Change", "ModelHolder", "Refresh", "Watcher"]
