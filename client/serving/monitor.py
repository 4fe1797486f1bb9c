"""Windows of live traffic: how much was served, and how far it drifted from the training data.

The service hands every answered batch to `TrafficMonitor.add` (after the answer has left).
Every ``window_rows`` rows it closes a window: the rows and requests served, the version that
answered, and — when the node has a drift `Reference` — the drift scores of those rows and
their predictions (`federator.client.serving.drift`). Each window is appended as one JSON line
to ``<store>/serving/windows.jsonl``, where the node's ClientApp finds it to report (aggregate
numbers only), and handed to ``report`` (the service's metrics).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from federator.client.serving.drift import DriftScores, Reference, build_reference, score_window
from federator.client.serving.events import append_record, reference_path, windows_path
from federator.simulations.datasets import ArrayData

DEFAULT_WINDOW_ROWS = 500


def write_reference(
    data: ArrayData, store_root: Path, *, rng: np.random.Generator
) -> tuple[Path, Reference]:
    """The node's drift reference from the data it trains on, saved where the service looks."""
    classes = int(data.y.max()) + 1 if len(data.y) else 1
    reference = build_reference(data.x, data.y, classes=classes, rng=rng)
    path = reference_path(store_root)
    reference.save(path)
    return path, reference


@dataclass(frozen=True)
class Window:
    """One closed window of traffic."""

    version: int
    requests: int
    rows: int
    drift: DriftScores | None


class TrafficMonitor:
    """Collects answered rows into windows; scores and records each one."""

    def __init__(
        self,
        store_root: Path,
        *,
        reference: Reference | None,
        window_rows: int = DEFAULT_WINDOW_ROWS,
        report: Callable[[Window], None] = lambda window: None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.reference = reference
        self._path = windows_path(store_root)
        self._window_rows = window_rows
        self._report = report
        self._now = now or (lambda: datetime.now(UTC))
        self._rows: list[npt.NDArray[np.float32]] = []
        self._labels: list[int] = []
        self._requests = 0
        self._lock = threading.Lock()

    def add(self, batch: npt.NDArray[np.float32], labels: list[int], *, version: int) -> None:
        """One answered request; closes (and records) a window when it is full."""
        with self._lock:
            self._rows.append(batch.reshape(len(batch), -1))
            self._labels.extend(labels)
            self._requests += 1
            if len(self._labels) < self._window_rows:
                return
            rows, labels_, requests = np.concatenate(self._rows), self._labels, self._requests
            self._rows, self._labels, self._requests = [], [], 0
        drift = (
            None
            if self.reference is None
            else score_window(self.reference, rows, np.asarray(labels_, dtype=np.int64))
        )
        window = Window(version=version, requests=requests, rows=len(rows), drift=drift)
        self._append(window)
        self._report(window)

    def _append(self, window: Window) -> None:
        record: dict[str, Any] = {"at": self._now().isoformat(timespec="seconds")}
        append_record(self._path, record | asdict(window))


__all__ = ["DEFAULT_WINDOW_ROWS", "TrafficMonitor", "Window", "write_reference"]
