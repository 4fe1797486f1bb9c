"""The ordered background worker that keeps MLflow writes off the round's critical path."""

from __future__ import annotations

import threading

import pytest

from federator.server.tracking._worker import OrderedWorker


def test_jobs_run_in_order_and_close_waits_for_all() -> None:
    done: list[int] = []
    gate = threading.Event()
    w = OrderedWorker("t")

    def first() -> None:
        gate.wait(5)
        done.append(1)

    w.submit("first", first)
    for i in range(2, 6):
        w.submit(f"job {i}", lambda i=i: done.append(i))  # type: ignore[misc]
    assert w.pending == 5
    gate.set()
    seen: list[int] = []
    assert w.close(on_wait=seen.append, poll=0.01) is None
    assert done == [1, 2, 3, 4, 5]
    assert w.pending == 0


def test_first_failure_stops_the_queue_and_names_what_was_skipped() -> None:
    done: list[str] = []

    def boom() -> None:
        raise OSError("disk full")

    w = OrderedWorker("t")
    w.submit("a", lambda: done.append("a"))
    w.submit("b", boom)
    w.submit("c", lambda: done.append("c"))
    failure = w.close()
    assert failure is not None
    assert failure.label == "b"
    assert isinstance(failure.error, OSError)
    assert failure.skipped == ("c",)
    assert done == ["a"]


def test_submit_after_close_is_refused() -> None:
    w = OrderedWorker("t")
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit("late", lambda: None)
