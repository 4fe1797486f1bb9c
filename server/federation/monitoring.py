"""What the nodes' model services reported in this round's replies.

A node that serves its model (``federator node serve``) adds a `ServingReport` to every reply
(`federator.client.serving.report`: running totals, the newest drift scores, roll-out events
since its last reply). The round collects them here, validated with the same declaration —
a report that does not validate is refused with its reason and the node's update is not
affected — and merged per node (a train and an evaluate reply in one round). They reach
MLflow as ``serving/<pseudonym>/…`` metrics and the round's record, under pseudonyms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Message

from federator.client.serving.report import MAX_EVENTS, ServingReport, parse_report
from federator.client.wire import META_KEY, MONITOR_KEY

Pseudonym = Callable[[int], str]


@dataclass(frozen=True)
class NodeServing:
    """One node's serving report for a round."""

    pseudonym: str
    report: ServingReport


@dataclass(frozen=True)
class Collected:
    """The round's reports, and the reports refused (pseudonym, reason)."""

    reports: list[NodeServing]
    refused: list[tuple[str, str]]


def _merge(earlier: ServingReport, later: ServingReport) -> ServingReport:
    """Two reports of one node in one round: the later totals, both sets of events."""
    return later.model_copy(
        update={
            "version": later.version if later.version is not None else earlier.version,
            "drift": later.drift or earlier.drift,
            "installed": later.installed or earlier.installed,
            "events": (earlier.events + later.events)[-MAX_EVENTS:],
        }
    )


def collect(messages: Iterable[Message], *, pseudonym: Pseudonym) -> Collected:
    """The serving reports in ``messages`` (replies), merged per node, in pseudonym order."""
    merged: dict[str, ServingReport] = {}
    refused: list[tuple[str, str]] = []
    for msg in messages:
        if not msg.has_content():
            continue
        meta = msg.content.config_records.get(META_KEY)
        if meta is None or MONITOR_KEY not in meta:
            continue
        who = pseudonym(msg.metadata.src_node_id)
        try:
            report = parse_report(meta[MONITOR_KEY])
        except ValueError as err:
            refused.append((who, f"serving report refused: {err}"))
            continue
        merged[who] = _merge(merged[who], report) if who in merged else report
    return Collected([NodeServing(p, merged[p]) for p in sorted(merged)], refused)


INSTALLED_ACCURACY = "installed_accuracy"  # the installed version on the node's own data
INSTALLED_VERSION = "installed_version"  # ... which version that was


def serving_metrics(reports: Iterable[NodeServing]) -> dict[str, float]:
    """``serving/<pseudonym>/…`` MLflow metrics of a round's reports."""
    m: dict[str, float] = {}
    for node in reports:
        r, key = node.report, f"serving/{node.pseudonym}"
        if r.installed is not None:
            m[f"{key}/{INSTALLED_ACCURACY}"] = r.installed.accuracy
            m[f"{key}/{INSTALLED_VERSION}"] = r.installed.version
        if not r.service:
            continue
        m[f"{key}/requests"] = r.requests
        m[f"{key}/rows"] = r.rows
        m[f"{key}/fallbacks"] = r.fallbacks
        if r.version is not None:
            m[f"{key}/version"] = r.version
        if r.drift is not None:
            m[f"{key}/drifted_features"] = r.drift.drifted_features
            m[f"{key}/ks_max"] = r.drift.ks_max
            m[f"{key}/psi_max"] = r.drift.psi_max
            m[f"{key}/prediction_js"] = r.drift.prediction_js
    return m


__all__ = [
    "INSTALLED_ACCURACY",
    "INSTALLED_VERSION",
    "Collected",
    "NodeServing",
    "collect",
    "serving_metrics",
]
