"""How far behind the rounds the saved state is: durability lag and back-pressure.

A round's results are *durable* once its checkpoint is committed (the run tag
``federator.checkpoint_round`` names it): a resume after any crash continues from there. The
tracking worker commits in the background, so a fast round loop can run ahead of it. Left
alone, a loaded machine lets the queue grow without bound, each queued round holding a model
in memory and none of them safe. `DurabilityLedger` keeps the round loop honest: it records
when each round ended and when it was committed, and `hold_back` makes the round loop wait
whenever more than ``max_unsaved`` finished rounds are not committed yet.

The lag of a round is counted in rounds: how many later rounds had ended before its commit
(0 — committed while the next round ran; 1 — the next round had to wait for it), and in
seconds from its end to its commit.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class DurabilityListener(Protocol):
    """Who hears about durability (the progress display)."""

    def saved(self, round_: int) -> None:
        """Round ``round_`` is committed (called from the tracking writer's thread)."""

    def held_back(self, round_: int, saved_through: int) -> None:
        """Round ``round_`` waits until older rounds are saved (the round loop's thread)."""


@dataclass(frozen=True, kw_only=True)
class DurabilityReport:
    """What was durable when: the last committed round and the measured lag."""

    saved_through: int
    rounds_saved: int
    lag_rounds_median: float
    lag_rounds_worst: int
    lag_seconds_median: float
    lag_seconds_worst: float
    waits: int
    waited_seconds: float

    def describe(self) -> str:
        """One line for a person."""
        if not self.rounds_saved:
            return f"through round {self.saved_through}"
        line = (
            f"through round {self.saved_through}; commit lag median "
            f"{self.lag_rounds_median:g} / worst {self.lag_rounds_worst} round(s) "
            f"({self.lag_seconds_median:.2f} s / {self.lag_seconds_worst:.2f} s)"
        )
        if self.waits:
            line += f"; rounds waited {self.waits}× for MLflow ({self.waited_seconds:.1f} s)"
        return line


class DurabilityLedger:
    """Round ends (the round loop's thread) against commits (the tracking worker's thread).

    ``saved_through`` starts at the round a resumed run continues after (0 for a new run).
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        max_unsaved: int,
        saved_through: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_unsaved < 0:
            raise ValueError(f"max_unsaved must be ≥ 0, got {max_unsaved}")
        self.max_unsaved = max_unsaved
        self._clock = clock
        self._cond = threading.Condition()
        self._saved_through = saved_through
        self._ended: dict[int, float] = {}
        self._ended_count = 0
        self._lag_rounds: list[int] = []
        self._lag_seconds: list[float] = []
        self._waits = 0
        self._waited = 0.0

    def ended(self, round_: int) -> None:
        """Round ``round_`` has its outcome (called before its write is queued)."""
        with self._cond:
            self._ended[round_] = self._clock()
            self._ended_count += 1

    def committed(self, round_: int) -> None:
        """Round ``round_``'s checkpoint is committed (called by the worker)."""
        with self._cond:
            end = self._ended.pop(round_, None)
            if end is not None:
                later = sum(1 for r in self._ended if r > round_)
                self._lag_rounds.append(later)
                self._lag_seconds.append(self._clock() - end)
            self._saved_through = max(self._saved_through, round_)
            self._cond.notify_all()

    def hold_back(
        self,
        round_: int,
        *,
        check: Callable[[], None],
        on_wait: Callable[[int, int], None] | None = None,
        poll: float = 0.25,
    ) -> float:
        """Block while more than ``max_unsaved`` rounds up to ``round_`` are uncommitted.

        ``check`` runs at every poll and raises if the writer failed (so a dead writer never
        leaves the round loop waiting forever); ``on_wait(round_, saved_through)`` is told
        once, when waiting starts. Returns the seconds waited.
        """
        must_have = round_ - self.max_unsaved
        with self._cond:
            saved = self._saved_through
        if saved >= must_have:
            return 0.0
        t0 = self._clock()
        if on_wait is not None:
            on_wait(round_, saved)
        while True:
            check()
            with self._cond:
                if self._saved_through >= must_have:
                    waited = self._clock() - t0
                    self._waits += 1
                    self._waited += waited
                    return waited
                self._cond.wait(timeout=poll)

    def report(self) -> DurabilityReport:
        """The lag measured so far."""
        with self._cond:
            rounds, seconds = list(self._lag_rounds), list(self._lag_seconds)
            return DurabilityReport(
                saved_through=self._saved_through,
                rounds_saved=len(rounds),
                lag_rounds_median=statistics.median(rounds) if rounds else 0.0,
                lag_rounds_worst=max(rounds, default=0),
                lag_seconds_median=statistics.median(seconds) if seconds else 0.0,
                lag_seconds_worst=max(seconds, default=0.0),
                waits=self._waits,
                waited_seconds=self._waited,
            )
