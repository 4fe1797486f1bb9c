"""What a node tells the coordinator about its model service, in the replies it already sends.

The service appends roll-out events (``serving/events.jsonl``) and traffic windows
(``serving/windows.jsonl``) to the node's store. Each time the node's ClientApp replies to the
coordinator it reads what was appended since its last reply and sends one `ServingReport`:
running totals (requests, rows, fall-backs), the version the service answered with last, the
newest window's drift scores, and the roll-out events since the last report (at most
`MAX_EVENTS`). Only these aggregates leave the node — no inputs, no predictions.

`ServingReport` is the one declaration of this part of the wire: the node builds it, the
coordinator validates what arrives with it (a node may be hostile: unknown keys, absurd
numbers and oversized reports are refused there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from federator.client.serving.events import FOLDER, events_path, read_records, windows_path

MAX_EVENTS = 20
MAX_REPORT_BYTES = 32 * 1024
_CURSOR = "reported.json"

Count = Annotated[int, Field(ge=0, le=10**15)]
Unit = Annotated[float, Field(ge=0, le=1)]
Score = Annotated[float, Field(ge=0, le=1e6)]
Text = Annotated[str, Field(max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftSummary(_Strict):
    """The newest traffic window's drift scores (`federator.client.serving.drift`)."""

    rows: Count
    ks_max: Unit
    drifted_features: Unit
    psi_max: Score
    psi_mean: Score
    prediction_js: Unit


class RolloutNote(_Strict):
    """One roll-out event, as the coordinator sees it."""

    kind: Annotated[str, Field(max_length=20)]
    candidate: Count
    stable: Count | None = None
    stage: Annotated[str, Field(max_length=20)] = ""
    reason: Text = ""
    agreement: Unit | None = None


class InstalledAccuracy(_Strict):
    """How the version installed on the node does on the node's own validation split now
    (`federator.client.serving.accuracy`): the champion's client-side accuracy, for the
    ``[retrain]`` policy's ``accuracy_drop``."""

    version: Count
    accuracy: Unit
    examples: Count


class ServingReport(_Strict):
    """A node's model service since it started, and what happened since the last report.
    ``service`` False: the node serves nothing, and the report only carries ``installed``."""

    service: bool = True

    version: Count | None = None  # the version the service answered with most recently
    requests: Count = 0  # running totals
    rows: Count = 0
    fallbacks: Count = 0
    drift: DriftSummary | None = None
    events: Annotated[tuple[RolloutNote, ...], Field(max_length=MAX_EVENTS)] = ()
    installed: InstalledAccuracy | None = None


class _Cursor(_Strict):
    events: Count = 0  # byte offsets already reported
    windows: Count = 0
    requests: Count = 0
    rows: Count = 0
    fallbacks: Count = 0


def serving_report(store_root: Path, *, installed: InstalledAccuracy | None = None) -> str | None:
    """The report to send now (JSON text), or None if this node's service never ran and
    there is no ``installed`` accuracy to tell."""
    folder = store_root / FOLDER
    if not (events_path(store_root).exists() or windows_path(store_root).exists()):
        return (  # no service has recorded anything here: no traffic to report
            ServingReport(service=False, installed=installed).model_dump_json(exclude_defaults=True)
            if installed
            else None
        )
    cursor = _read_cursor(folder / _CURSOR)
    events, events_end = read_records(events_path(store_root), after=cursor.events)
    windows, windows_end = read_records(windows_path(store_root), after=cursor.windows)
    notes = [n for n in (_note(e) for e in events) if n is not None]
    newest = windows[-1] if windows else None
    report = ServingReport(
        version=newest["version"] if newest else None,
        requests=cursor.requests + sum(int(w["requests"]) for w in windows),
        rows=cursor.rows + sum(int(w["rows"]) for w in windows),
        fallbacks=cursor.fallbacks + sum(1 for n in notes if n.kind == "fell-back"),
        drift=DriftSummary.model_validate(newest["drift"])
        if newest and newest.get("drift")
        else None,
        events=tuple(notes[-MAX_EVENTS:]),
        installed=installed,
    )
    _write_cursor(
        folder / _CURSOR,
        _Cursor(
            events=events_end,
            windows=windows_end,
            requests=report.requests,
            rows=report.rows,
            fallbacks=report.fallbacks,
        ),
    )
    return report.model_dump_json(exclude_defaults=True)


_NOTE_KEYS = tuple(RolloutNote.model_fields)


def _drift(window: dict[str, Any] | None) -> DriftSummary | None:
    if window is None or not window.get("drift"):
        return None
    try:
        return DriftSummary.model_validate(window["drift"])
    except ValueError:
        return None


def _note(event: dict[str, object]) -> RolloutNote | None:
    """An event as reported; None for a record the service did not write (skipped, so one
    damaged line never stops the node's replies)."""
    try:
        return RolloutNote.model_validate({k: event[k] for k in _NOTE_KEYS if k in event})
    except ValueError:
        return None


def _read_cursor(path: Path) -> _Cursor:
    try:
        return _Cursor.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return _Cursor()  # none yet (or damaged): report everything kept


def _write_cursor(path: Path, cursor: _Cursor) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cursor.model_dump_json())
    os.replace(tmp, path)


def parse_report(text: object) -> ServingReport:
    """A report as the coordinator receives it; ``ValueError`` saying why it is refused."""
    if not isinstance(text, str):
        raise ValueError("a serving report must be JSON text")
    if len(text) > MAX_REPORT_BYTES:
        raise ValueError(f"a serving report of {len(text)} bytes (at most {MAX_REPORT_BYTES})")
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ValueError(f"a serving report that is not JSON ({err})") from None
    return ServingReport.model_validate(document)


__all__ = [
    "MAX_EVENTS",
    "DriftSummary",
    "InstalledAccuracy",
    "RolloutNote",
    "ServingReport",
    "parse_report",
    "serving_report",
]
