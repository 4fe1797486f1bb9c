"""The model service's HTTP interface (Starlette, run by uvicorn: ``federator node serve``).

=================  ===========================================================================
``POST /predict``  ``{"inputs": [row, ...]}`` → ``{"version", "predictions", "probabilities"}``
                   (or the rows as raw float32 bytes, ``Content-Type: application/octet-stream``)
``GET /model``     the version in use: round, federation, created, expiry (and if it expired)
``GET /health``    200 while a model is served (with any problem noticed), 503 before one is
``GET /metrics``   Prometheus text: requests, latency, rows, version in use, swaps
=================  ===========================================================================

With a token configured every route but ``/health`` needs ``Authorization: Bearer <token>``.
Every refusal is a JSON ``{"error": ...}`` with a 4xx status (`federator.client.serving.inputs`
says which); a model that raises while predicting is a 500 with the reason. Nothing a request
sends stops the service or changes the model it serves.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from federator import RequestRejected
from federator.client.serving.drift import Reference
from federator.client.serving.events import EventLog
from federator.client.serving.holder import Change, Loader, ModelHolder, Refresh, Watcher
from federator.client.serving.inputs import RAW_FLOAT32, Limits, parse_inputs, parse_raw
from federator.client.serving.metrics import ServeMetrics
from federator.client.serving.model import Prediction, ServedModel
from federator.client.serving.monitor import DEFAULT_WINDOW_ROWS, TrafficMonitor
from federator.client.serving.rollout import Event, RolloutPolicy
from federator.client.store import ModelStore

Handler = Callable[[Request], Awaitable[Response]]
_log = logging.getLogger("federator.serve")


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """How the service runs: its store, who may call it, how much a request may carry, how
    often it looks for a newly installed version."""

    store: Path
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    poll_interval: float = 1.0
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    reference: Path | None = None  # the drift reference (None: traffic is counted, no drift)
    window_rows: int = DEFAULT_WINDOW_ROWS


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Service:
    """The routes, around one holder and one set of metrics."""

    def __init__(
        self,
        settings: ServeSettings,
        holder: ModelHolder,
        metrics: ServeMetrics,
        monitor: TrafficMonitor,
    ):
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.monitor = monitor

    def _authorised(self, request: Request) -> bool:
        token = self.settings.token
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def route(self, name: str, handler: Handler, *, open_: bool = False) -> Handler:
        """``handler`` with authorisation, JSON errors and its metrics."""

        async def wrapped(request: Request) -> Response:
            t0 = time.perf_counter()
            if not open_ and not self._authorised(request):
                response: Response = _error("a valid bearer token is required", 401)
            else:
                try:
                    response = await handler(request)
                except RequestRejected as err:
                    response = _error(str(err), err.status)
            self.metrics.observe(
                name,
                response.status_code,
                time.perf_counter() - t0,
                rows=getattr(request.state, "rows", 0),
            )
            return response

        return wrapped

    def _served(self) -> ServedModel:
        model = self.holder.model
        if model is None:
            why = self.holder.problem or f"no model is installed in {self.settings.store} yet"
            raise RequestRejected(why, status=503)
        return model

    async def predict(self, request: Request) -> Response:
        self._served()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.settings.limits.max_body_bytes:
            raise RequestRejected(
                f"the body has {declared} bytes; at most "
                f"{self.settings.limits.max_body_bytes} are accepted",
                status=413,
            )
        body = await _read_limited(request, self.settings.limits.max_body_bytes)
        route = self.holder.route()
        raw = request.headers.get("content-type", "").split(";")[0].strip() == RAW_FLOAT32
        batch = (parse_raw if raw else parse_inputs)(
            body, input_shape=route.answer.input_shape, limits=self.settings.limits
        )
        answered = self._answer(route.answer, batch)
        if answered is None:
            return _error(f"version {route.answer.version} failed to predict", 500)
        model, prediction = answered
        request.state.rows = len(prediction.labels)
        after = BackgroundTasks()  # run once the answer has left
        after.add_task(self.monitor.add, batch, prediction.labels, version=model.version)
        if route.shadow is not None:
            after.add_task(self._shadow, route.shadow, batch, prediction.labels)
        return JSONResponse(
            {
                "version": model.version,
                "predictions": prediction.labels,
                "probabilities": prediction.probabilities,
            },
            background=after,
        )

    def _answer(
        self, model: ServedModel, batch: npt.NDArray[np.float32]
    ) -> tuple[ServedModel, Prediction] | None:
        """``model``'s prediction; if it fails, the fall-back's (None: no fall-back)."""
        t0 = time.perf_counter()
        try:
            prediction = model.predict(batch)
        except Exception as err:  # noqa: BLE001 - a task's model may raise anything
            instead = self.holder.fallback_for(model)  # asked before the failure is recorded
            self.holder.record(
                model, seconds=time.perf_counter() - t0, error=f"{type(err).__name__}: {err}"
            )
            if instead is None:
                _log.error("version %s failed to predict: %s", model.version, err)
                return None
            try:
                return instead, instead.predict(batch)
            except Exception as again:  # noqa: BLE001 - answered as a 500 with the reason
                _log.error("version %s failed to predict too: %s", instead.version, again)
                return None
        self.holder.record(model, seconds=time.perf_counter() - t0)
        return model, prediction

    def _shadow(
        self, model: ServedModel, batch: npt.NDArray[np.float32], labels: list[int]
    ) -> None:
        """The candidate predicts what the stable version answered, after the answer left."""
        t0 = time.perf_counter()
        try:
            shadowed = model.predict(batch).labels
        except Exception as err:  # noqa: BLE001 - recorded: the roll-out falls back
            self.holder.record(
                model, seconds=time.perf_counter() - t0, error=f"{type(err).__name__}: {err}"
            )
            return
        agreed = sum(a == b for a, b in zip(shadowed, labels, strict=True))
        self.holder.record(model, seconds=time.perf_counter() - t0, agreed=(agreed, len(labels)))

    async def model(self, request: Request) -> Response:
        model = self._served()
        info, rollout = model.info, self.holder.rollout
        candidate = rollout.candidate
        return JSONResponse(
            {
                "version": info.version,
                "round": info.round,
                "federation": info.federation,
                "created_at": info.created_at,
                "expires_at": info.expires_at,
                "expired": info.expired(),
                "input_shape": list(model.input_shape),
                "candidate": candidate.version if candidate else None,
                "stage": rollout.stage,
            }
        )

    async def health(self, request: Request) -> Response:
        model, problem = self.holder.model, self.holder.problem
        if model is None:
            return JSONResponse({"status": "no-model", "problem": problem}, status_code=503)
        status = "degraded" if problem or model.info.expired() else "ok"
        return JSONResponse({"status": status, "version": model.version, "problem": problem})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing it (413) as soon as it grows past ``limit`` bytes (a chunked body
    declares no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(f"the body exceeds {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    settings: ServeSettings, *, store: ModelStore | None = None, loader: Loader | None = None
) -> Starlette:
    """The service for ``settings.store``: loads the current version at start-up (if any),
    then rolls out each newly installed one. ``loader``: how a version is loaded (default:
    verified from the store; tests pass one that breaks a version on purpose)."""
    opened = store or ModelStore.reopen(settings.store)
    metrics = ServeMetrics()
    events = EventLog(opened.root)

    def on_event(event: Event) -> None:
        events.append(event)
        metrics.rolled(event)
        _log.info(
            "roll-out of version %s: %s%s%s",
            event.candidate,
            event.kind.value,
            f" ({event.stage})" if event.stage else "",
            f": {event.reason}" if event.reason else "",
        )

    holder = ModelHolder(opened, policy=settings.rollout, report=on_event, loader=loader)

    def report(outcome: Refresh) -> None:
        metrics.refreshed(outcome)
        if outcome.change is Change.SWAPPED:
            _log.info("serving version %s (installed: %s)", outcome.serving, outcome.wanted)
        elif outcome.change is not Change.NONE:
            _log.warning("still serving version %s: %s", outcome.serving, outcome.reason)

    report(holder.refresh())
    reference = Reference.load(settings.reference) if settings.reference else None
    monitor = TrafficMonitor(
        opened.root,
        reference=reference,
        window_rows=settings.window_rows,
        report=metrics.window,
    )
    service = _Service(settings, holder, metrics, monitor)
    watcher = Watcher(holder, interval=settings.poll_interval, report=report)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    routes = [
        Route("/predict", service.route("predict", service.predict), methods=["POST"]),
        Route("/model", service.route("model", service.model), methods=["GET"]),
        Route("/health", service.route("health", service.health, open_=True), methods=["GET"]),
        Route("/metrics", service.route("metrics", service.metrics_text), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.holder = holder
    return app


__all__ = ["ServeSettings", "build_app"]
