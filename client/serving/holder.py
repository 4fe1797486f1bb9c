"""The versions in use, taken from the store's ``current`` and rolled out by the node's policy.

The node installs releases into its store (`federator.client.store`) whenever the coordinator
pushes one. `ModelHolder.refresh` looks at ``current`` and, when it points at a version not
loaded yet, loads it completely — verified, built, weights in — before offering it to the
`Rollout` (`federator.client.serving.rollout`): the first version serves at once, later ones
as the partner's roll-out policy says. A request always reads one whole model, old or new, so
no request fails during a swap.

A version that does not load (altered files, a task whose code raises) is reported and not
retried; the service keeps serving the model it had. A store that cannot be read (moved,
switched underneath) leaves everything in place too, and says so in `problem`. When a
candidate fails on live requests the holder rolls the store's ``current`` back to the stable
version, so a restarted service (or another worker) does not pick the failed one up again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from federator import ReleaseRefused
from federator.client.serving.model import ServedModel, load_served
from federator.client.serving.rollout import Event, EventKind, Rollout, RolloutPolicy, Route
from federator.client.store import ModelStore

Loader = Callable[[ModelStore, int], ServedModel]
Report = Callable[[Event], None]


class Change(StrEnum):
    """What a refresh did."""

    NONE = "none"  # current is a version already loaded (or one that failed before)
    SWAPPED = "swapped"  # a new version was loaded and handed to the roll-out
    FAILED = "failed"  # current points at a version that did not load; the old one stays
    UNREADABLE = "unreadable"  # the store could not be read; the old one stays


@dataclass(frozen=True)
class Refresh:
    """A refresh's outcome: the change, the stable version, the wanted one, why it failed."""

    change: Change
    serving: int | None
    wanted: int | None = None
    reason: str = ""


def _load(store: ModelStore, version: int) -> ServedModel:
    return load_served(store, version)


class ModelHolder:
    """Loads what the store installs; answers with what the roll-out says."""

    def __init__(
        self,
        store: ModelStore,
        *,
        policy: RolloutPolicy | None = None,
        loader: Loader | None = None,
        report: Report | None = None,
    ) -> None:
        self._store = store
        self._loader = loader or _load
        self._report = report or (lambda event: None)
        self.rollout = Rollout(policy or RolloutPolicy())
        self._failed: dict[int, str] = {}
        self._problem = ""
        self._lock = threading.Lock()  # one refresh at a time; requests take no lock

    @property
    def model(self) -> ServedModel | None:
        """The stable version (what ``/model`` and ``/health`` describe)."""
        return self.rollout.stable

    @property
    def problem(self) -> str:
        """Why the store's current version is not the one served, if so ("" if fine)."""
        return self._problem

    def route(self) -> Route:
        return self.rollout.route()

    def fallback_for(self, model: ServedModel) -> ServedModel | None:
        return self.rollout.fallback_for(model)

    def record(
        self,
        model: ServedModel,
        *,
        seconds: float,
        error: str = "",
        agreed: tuple[int, int] | None = None,
    ) -> None:
        """One prediction's outcome; a fall-back rolls the store back and is reported."""
        event = self.rollout.record(model, seconds=seconds, error=error, agreed=agreed)
        if event is None:
            return
        if event.kind is EventKind.FELL_BACK:
            self._roll_store_back(event)
        self._report(event)

    def refresh(self) -> Refresh:
        """Load the store's current version if it is new, and offer it to the roll-out."""
        with self._lock:
            serving = self.model.version if self.model else None
            try:
                wanted = self._store.current_version()
            except (OSError, ValueError) as err:
                self._problem = f"the store {self._store.root} cannot be read ({err})"
                return Refresh(Change.UNREADABLE, serving, reason=self._problem)
            self._withdraw_unless(wanted)
            candidate = self.rollout.candidate
            if wanted is None and serving is not None:
                self._problem = (
                    f"the store {self._store.root} has no current version any more (moved or "
                    f"emptied); still serving version {serving}"
                )
                return Refresh(Change.NONE, serving, wanted, self._problem)
            if wanted is None or wanted in (serving, candidate.version if candidate else None):
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
            self._problem = ""
            event = self.rollout.offer(model)
            if event is not None:
                self._report(event)
            return Refresh(Change.SWAPPED, self.model.version if self.model else None, wanted)

    def _withdraw_unless(self, wanted: int | None) -> None:
        candidate = self.rollout.candidate
        if candidate is None or candidate.version == wanted:
            return
        event = self.rollout.withdraw(f"the store's current moved to version {wanted}")
        if event is not None:
            self._failed.setdefault(candidate.version, event.reason)
            self._report(event)

    def _roll_store_back(self, event: Event) -> None:
        """After a fall-back: the store's current back to the stable version (if current is
        still the failed candidate), and the candidate never offered again."""
        self._failed[event.candidate] = event.reason
        stable = self.rollout.stable
        if stable is None or self._store.current_version() != event.candidate:
            return
        try:
            self._store.rollback(to=stable.version)
        except (ReleaseRefused, OSError) as err:
            self._problem = f"fell back to version {stable.version} but the store says: {err}"


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


__all__ = ["Change", "Loader", "ModelHolder", "Refresh", "Watcher"]
