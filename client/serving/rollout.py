"""Safe roll-out on the node: a new version earns its place on live requests, or is rolled back.

The partner decides (``federator node serve --rollout …``; `RolloutPolicy`), not the
coordinator. When a new version is installed the service loads it as the *candidate* and takes
it through the policy's stages, in order:

* **shadow** — the stable version answers every request; the candidate predicts the same rows
  after the answer has left (a background task), and the service records how often the two
  agree and how long the candidate takes. It never answers.
* **canary** — a fraction of requests is answered by the candidate, the rest by the stable one.

After the last stage (at once, with no stages) the candidate is promoted and answers
everything; the old version stays loaded as the fallback while the new one serves its first
``watch_requests`` requests. At any point, if the candidate raises while predicting or its
median latency over a window breaks ``max_latency_ms``, the service falls back: the stable
version answers (the request that failed too — no request fails), the store's ``current`` is
rolled back to it, and the event is recorded for the coordinator to see.

`Rollout` is the state machine alone: it is told what happened (`offer`, `record`) and says
which model answers (`route`) and what changed (`Event`). It holds no I/O; the HTTP service
does the store roll-back and the reporting.
"""

from __future__ import annotations

import random
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from federator.client.serving.model import ServedModel

_WINDOW = 50  # candidate latencies the median is taken over


class Stage(StrEnum):
    """A roll-out stage a candidate goes through before it is promoted."""

    SHADOW = "shadow"
    CANARY = "canary"


@pydantic_dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    """How this node lets a new version take over (the CLI's ``--rollout`` options)."""

    stages: tuple[Stage, ...] = ()
    shadow_requests: Annotated[int, Field(ge=1)] = 200
    canary_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    canary_requests: Annotated[int, Field(ge=1)] = 200
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    fallback: bool = True
    watch_requests: Annotated[int, Field(ge=0)] = 100


class EventKind(StrEnum):
    """What a roll-out reports."""

    STARTED = "started"  # a candidate arrived (or was swapped in at once, with no stages)
    STAGE = "stage"  # it moved to the next stage
    PROMOTED = "promoted"  # it answers everything now
    SETTLED = "settled"  # it served its watch requests: the old version is let go
    FELL_BACK = "fell-back"  # it failed; the stable version answers again


@dataclass(frozen=True)
class Event:
    """One roll-out step, with the candidate's record so far."""

    kind: EventKind
    stable: int | None
    candidate: int
    stage: str = ""
    reason: str = ""
    requests: int = 0
    agreement: float | None = None
    median_latency_ms: float | None = None


@dataclass(frozen=True)
class Route:
    """Who answers one request, and who predicts beside it without answering."""

    answer: ServedModel
    shadow: ServedModel | None = None


@dataclass
class _Trial:
    """A candidate's record in its current stage."""

    model: ServedModel
    stage_index: int
    requests: int = 0
    compared: int = 0  # shadow predictions: rows compared with the stable version's labels
    agreed: int = 0  # ... and rows labelled the same
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))


class Rollout:
    """Which loaded version answers, and when a candidate is promoted or rolled back."""

    def __init__(self, policy: RolloutPolicy, *, rng: Callable[[], float] | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random(0).random
        self._stable: ServedModel | None = None
        self._trial: _Trial | None = None
        self._watching: ServedModel | None = None  # the old version, kept while the new settles
        self._watched = 0
        self._lock = threading.Lock()

    @property
    def stable(self) -> ServedModel | None:
        return self._stable

    @property
    def candidate(self) -> ServedModel | None:
        trial = self._trial
        return trial.model if trial else None

    @property
    def stage(self) -> str:
        """The candidate's stage ("" with no candidate)."""
        trial = self._trial
        return self._stage_name(trial) if trial else ""

    def offer(self, model: ServedModel) -> Event | None:
        """A newly installed version: the first one serves at once, later ones start their
        roll-out (replacing any candidate still on trial)."""
        with self._lock:
            if self._stable is None:
                self._stable = model
                return None
            self._trial = _Trial(model, stage_index=0)
            if not self.policy.stages:
                return self._promote(self._trial, EventKind.STARTED)
            return self._event(EventKind.STARTED, self._trial)

    def route(self) -> Route:
        """The model that answers the next request (and the one shadowing it, if any)."""
        stable, trial = self._stable, self._trial
        assert stable is not None, "route() before any model was offered"
        if trial is None:
            return Route(stable)
        if self._stage_of(trial) is Stage.SHADOW:
            return Route(stable, shadow=trial.model)
        if self._rng() < self.policy.canary_fraction:
            return Route(trial.model)
        return Route(stable)

    def withdraw(self, reason: str) -> Event | None:
        """Drop the candidate on trial (the store moved away from it: the partner rolled
        back, or another worker of this service fell back)."""
        with self._lock:
            trial = self._trial
            if trial is None:
                return None
            return self._fall_back(trial, reason)

    def fallback_for(self, model: ServedModel) -> ServedModel | None:
        """Who answers instead when ``model`` fails a request (None: nobody, it fails)."""
        if not self.policy.fallback:
            return None
        trial, watching = self._trial, self._watching
        if trial is not None and model is trial.model:
            return self._stable
        if watching is not None and model is self._stable:
            return watching
        return None

    def record(
        self,
        model: ServedModel,
        *,
        seconds: float,
        error: str = "",
        agreed: tuple[int, int] | None = None,
    ) -> Event | None:
        """What one prediction by ``model`` did (``agreed``: for a shadow prediction, how many
        of how many rows it labelled as the stable version did); the event it caused."""
        with self._lock:
            trial = self._trial
            if trial is not None and model is trial.model:
                return self._record_trial(trial, seconds=seconds, error=error, agreed=agreed)
            if self._watching is not None and model is self._stable:
                return self._record_watch(model, seconds=seconds, error=error)
            return None

    # -- inside the lock -------------------------------------------------------------------

    def _record_trial(
        self, trial: _Trial, *, seconds: float, error: str, agreed: tuple[int, int] | None
    ) -> Event | None:
        trial.requests += 1
        trial.latencies.append(seconds)
        if agreed is not None:
            trial.agreed += agreed[0]
            trial.compared += agreed[1]
        why = error or self._too_slow(trial.latencies)
        if why and self.policy.fallback:
            return self._fall_back(trial, why)
        stage = self._stage_of(trial)
        needed = (
            self.policy.shadow_requests if stage is Stage.SHADOW else self.policy.canary_requests
        )
        if trial.requests < needed:
            return None
        if trial.stage_index + 1 < len(self.policy.stages):
            # The event names the stage entered, with the record of the one finished.
            following = _Trial(trial.model, stage_index=trial.stage_index + 1)
            event = replace(self._event(EventKind.STAGE, trial), stage=self._stage_name(following))
            self._trial = following
            return event
        return self._promote(trial, EventKind.PROMOTED)

    def _record_watch(self, model: ServedModel, *, seconds: float, error: str) -> Event | None:
        self._watched += 1
        old = self._watching
        assert old is not None
        if error and self.policy.fallback:
            self._stable, self._watching = old, None
            return Event(EventKind.FELL_BACK, old.version, model.version, reason=error)
        if self._watched >= self.policy.watch_requests:
            self._watching = None
            return Event(EventKind.SETTLED, model.version, model.version, requests=self._watched)
        return None

    def _promote(self, trial: _Trial, kind: EventKind) -> Event:
        event = self._event(kind, trial)
        self._watching = self._stable if self.policy.watch_requests else None
        self._watched = 0
        self._stable, self._trial = trial.model, None
        return event

    def _fall_back(self, trial: _Trial, why: str) -> Event:
        self._trial = None
        return replace(self._event(EventKind.FELL_BACK, trial), reason=why)

    def _too_slow(self, latencies: deque[float]) -> str:
        bound = self.policy.max_latency_ms
        if bound is None or len(latencies) < min(_WINDOW, 10):
            return ""
        median_ms = statistics.median(latencies) * 1000
        if median_ms <= bound:
            return ""
        return f"median latency {median_ms:.1f} ms over {len(latencies)} requests > {bound:g} ms"

    def _stage_of(self, trial: _Trial) -> Stage:
        return self.policy.stages[trial.stage_index]

    def _stage_name(self, trial: _Trial) -> str:
        return self._stage_of(trial).value if self.policy.stages else ""

    def _event(self, kind: EventKind, trial: _Trial) -> Event:
        stable = self._stable.version if self._stable else None
        latencies = trial.latencies
        return Event(
            kind,
            stable,
            trial.model.version,
            stage=self._stage_name(trial),
            requests=trial.requests,
            agreement=trial.agreed / trial.compared if trial.compared else None,
            median_latency_ms=statistics.median(latencies) * 1000 if latencies else None,
        )


__all__ = ["Event", "EventKind", "Rollout", "RolloutPolicy", "Route", "Stage"]
