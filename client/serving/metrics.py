"""The model service's Prometheus metrics (``GET /metrics``), declared once.

prometheus_client (Apache-2.0) keeps the counters and renders the text format. With more than
one worker process (``--workers``) each worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (the CLI sets it to a fresh folder) and ``/metrics`` sums them,
so a scrape sees the whole service, whichever worker answers it.
"""

from __future__ import annotations

import os
from enum import StrEnum

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from federator.client.serving.holder import Change, Refresh
from federator.client.serving.monitor import Window
from federator.client.serving.rollout import Event

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Single-row requests take well under a millisecond: resolve that, and up to seconds.
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetric(StrEnum):
    """The names ``/metrics`` exposes (counters get Prometheus's ``_total`` suffix)."""

    REQUESTS = "federator_serve_requests"  # by route and HTTP status
    LATENCY = "federator_serve_request_seconds"  # histogram, by route
    ROWS = "federator_serve_predicted_rows"  # rows predicted
    MODEL_VERSION = "federator_serve_model_version"  # the version in use (0: none)
    SWAPS = "federator_serve_swaps"  # versions swapped in
    SWAP_FAILURES = "federator_serve_swap_failures"  # versions that did not load
    ROLLOUT_EVENTS = "federator_serve_rollout_events"  # by kind: started, promoted, fell-back
    SHADOW_AGREEMENT = "federator_serve_shadow_agreement"  # the last shadow stage's agreement
    DRIFT_KS = "federator_serve_drift_ks_max"  # the last window's largest per-feature KS
    DRIFT_PSI = "federator_serve_drift_psi_max"  # ... largest per-feature PSI
    DRIFT_FEATURES = "federator_serve_drift_features"  # ... share of features that drifted
    PREDICTION_SHIFT = "federator_serve_prediction_shift"  # ... JS distance of predicted labels


class ServeMetrics:
    """The service's instruments, on their own registry (or the multi-process files)."""

    def __init__(self) -> None:
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        registry = None if self._multiprocess else CollectorRegistry()
        self._registry = registry
        self.requests = Counter(
            ServeMetric.REQUESTS, "Requests answered", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            ServeMetric.LATENCY, "Time to answer", ["route"], buckets=_BUCKETS, registry=registry
        )
        self.rows = Counter(ServeMetric.ROWS, "Rows predicted", registry=registry)
        self.version = self._gauge(ServeMetric.MODEL_VERSION, "Model version in use (0: none)")
        self.swaps = Counter(ServeMetric.SWAPS, "Versions swapped in", registry=registry)
        self.swap_failures = Counter(
            ServeMetric.SWAP_FAILURES, "Versions that did not load", registry=registry
        )
        self.rollout_events = Counter(
            ServeMetric.ROLLOUT_EVENTS, "Roll-out steps", ["kind"], registry=registry
        )
        self.shadow_agreement = self._gauge(
            ServeMetric.SHADOW_AGREEMENT,
            "Fraction of rows a shadowed candidate labelled as the stable version",
        )
        self.drift_ks = self._gauge(ServeMetric.DRIFT_KS, "Largest per-feature KS statistic")
        self.drift_psi = self._gauge(ServeMetric.DRIFT_PSI, "Largest per-feature PSI")
        self.drift_features = self._gauge(
            ServeMetric.DRIFT_FEATURES, "Share of features whose KS test rejects"
        )
        self.prediction_shift = self._gauge(
            ServeMetric.PREDICTION_SHIFT, "JS distance of predicted vs training labels"
        )

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, registry=self._registry, multiprocess_mode="livemostrecent")

    def observe(self, route: str, status: int, seconds: float, *, rows: int = 0) -> None:
        """One answered request."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        if rows:
            self.rows.inc(rows)

    def refreshed(self, outcome: Refresh) -> None:
        """What a model refresh did."""
        if outcome.change is Change.SWAPPED:
            self.swaps.inc()
        elif outcome.change is Change.FAILED:
            self.swap_failures.inc()
        self.version.set(outcome.serving or 0)

    def window(self, window: Window) -> None:
        """A closed traffic window: its drift scores, if the node has a reference."""
        if window.drift is None:
            return
        self.drift_ks.set(window.drift.ks_max)
        self.drift_psi.set(window.drift.psi_max)
        self.drift_features.set(window.drift.drifted_features)
        self.prediction_shift.set(window.drift.prediction_js)

    def rolled(self, event: Event) -> None:
        """A roll-out step."""
        self.rollout_events.labels(kind=event.kind.value).inc()
        if event.agreement is not None:
            self.shadow_agreement.set(event.agreement)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        registry = self._registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["MULTIPROC_ENV", "ServeMetric", "ServeMetrics"]
