"""The service's own records, kept beside the store for the node to report: roll-out events
here, traffic windows (`federator.client.serving.monitor`) in the same folder.

Each `Event` (`federator.client.serving.rollout`) is appended as one JSON line to
``<store>/serving/events.jsonl`` with the time it happened. The file is the node's: the
coordinator learns of it only what the node's ClientApp reads from it and sends in the
replies it already makes (swaps, shadow agreement, fall-backs; no inputs, no predictions).
Appends of one short line are atomic on a local file system, so several worker processes may
share it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federator.client.serving.rollout import Event

FOLDER = "serving"
EVENTS = "events.jsonl"
WINDOWS = "windows.jsonl"  # traffic windows (`federator.client.serving.monitor`)
REFERENCE = "reference.npz"  # the drift reference `federator node start` writes


def events_path(store_root: Path) -> Path:
    return store_root / FOLDER / EVENTS


def windows_path(store_root: Path) -> Path:
    return store_root / FOLDER / WINDOWS


def reference_path(store_root: Path) -> Path:
    """Where `federator node start` keeps the node's drift reference."""
    return store_root / FOLDER / REFERENCE


class EventLog:
    """Appends events to ``<store>/serving/events.jsonl``."""

    def __init__(self, store_root: Path, *, now: Callable[[], datetime] | None = None) -> None:
        self.path = events_path(store_root)
        self._now = now or (lambda: datetime.now(UTC))

    def append(self, event: Event) -> dict[str, Any]:
        record = {"at": self._now().isoformat(timespec="seconds"), **asdict(event)}
        record["kind"] = event.kind.value
        append_record(self.path, record)
        return record


def append_record(path: Path, record: dict[str, Any]) -> None:
    """``record`` as one JSON line at the end of ``path`` (one ``write`` on an ``O_APPEND``
    file: lines of several processes never interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(store_root: Path, *, after: int = 0) -> tuple[list[dict[str, Any]], int]:
    """`read_records` of the store's events."""
    return read_records(events_path(store_root), after=after)


def read_records(path: Path, *, after: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Records appended to ``path`` from byte offset ``after`` on, and the offset to read
    from next time. A line cut short (a writer still appending) is left for the next read."""
    if not path.is_file():
        return [], after
    data = path.read_bytes()
    if after > len(data):  # the file was replaced: start over
        after = 0
    end = data.rfind(b"\n", after) + 1
    if end <= after:
        return [], after
    events = []
    for line in data[after:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a damaged line is skipped, not fatal: the rest still reports
    return events, end


__all__ = [
    "EVENTS",
    "FOLDER",
    "REFERENCE",
    "WINDOWS",
    "EventLog",
    "append_record",
    "events_path",
    "read_events",
    "read_records",
    "reference_path",
    "windows_path",
]
