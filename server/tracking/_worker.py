"""A single background thread that runs jobs in submission order.

MLflow writes (a model export, artifact uploads, registry calls) take from milliseconds to
seconds; doing them here keeps them off a round's critical path. Jobs run strictly in order,
so a model version's aliases are never set before the version exists. The first failure stops
the queue: later jobs are skipped (they may depend on the failed one) and the failure is
re-raised to the round loop by `raise_if_failed`, so a federation never trains on while its
results are being lost.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Job = Callable[[], None]


@dataclass(frozen=True)
class JobFailure:
    """The first job that raised, and what it raised."""

    label: str
    error: BaseException
    skipped: tuple[str, ...]


class OrderedWorker:
    """Runs submitted jobs one at a time, in order, on a background thread."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[tuple[str, Job] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._failure: tuple[str, BaseException] | None = None
        self._skipped: list[str] = []
        self._pending = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            label, job = item
            with self._lock:
                failed = self._failure is not None
            if failed:
                with self._lock:
                    self._skipped.append(label)
            else:
                try:
                    job()
                except Exception as err:  # noqa: BLE001 - kept and re-raised by raise_if_failed
                    with self._lock:
                        self._failure = (label, err)
            with self._lock:
                self._pending -= 1

    def submit(self, label: str, job: Job) -> None:
        """Queue ``job``; ``label`` names it in failure reports."""
        if self._closed:
            raise RuntimeError("worker is closed")
        with self._lock:
            self._pending += 1
        self._queue.put((label, job))

    @property
    def pending(self) -> int:
        """Jobs submitted but not finished."""
        with self._lock:
            return self._pending

    def failure(self) -> JobFailure | None:
        """The first failure so far, if any."""
        with self._lock:
            if self._failure is None:
                return None
            label, err = self._failure
            return JobFailure(label, err, tuple(self._skipped))

    def wait_idle(self, *, on_wait: Callable[[int], None] | None = None, poll: float = 0.5) -> None:
        """Block until every job submitted so far has run (the worker stays open)."""
        while self.pending:
            if on_wait is not None:
                on_wait(self.pending)
            time.sleep(poll)

    def close(
        self, *, on_wait: Callable[[int], None] | None = None, poll: float = 0.5
    ) -> JobFailure | None:
        """Finish every queued job (or skip it after a failure), stop the thread, and return
        the first failure. ``on_wait(pending)`` is called while waiting."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        while self._thread.is_alive():
            if on_wait is not None and self.pending:
                on_wait(self.pending)
            self._thread.join(timeout=poll)
        return self.failure()
