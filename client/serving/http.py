"""The model service's HTTP interface (Starlette, run by uvicorn: ``federator node serve``).

=================  ===========================================================================
``POST /predict``  ``{"inputs": [row, ...]}`` → ``{"version", "predictions", "probabilities"}``
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

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from federator import RequestRejected
from federator.client.serving.holder import Change, ModelHolder, Refresh, Watcher
from federator.client.serving.inputs import Limits, parse_inputs
from federator.client.serving.metrics import ServeMetrics
from federator.client.serving.model import ServedModel
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


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Service:
    """The routes, around one holder and one set of metrics."""

    def __init__(self, settings: ServeSettings, holder: ModelHolder, metrics: ServeMetrics):
        self.settings = settings
        self.holder = holder
        self.metrics = metrics

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
        model = self._served()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.settings.limits.max_body_bytes:
            raise RequestRejected(
                f"the body has {declared} bytes; at most "
                f"{self.settings.limits.max_body_bytes} are accepted",
                status=413,
            )
        body = await _read_limited(request, self.settings.limits.max_body_bytes)
        batch = parse_inputs(body, input_shape=model.input_shape, limits=self.settings.limits)
        try:
            prediction = model.predict(batch)
        except RuntimeError as err:  # torch's errors from a model that cannot run the batch
            return _error(f"version {model.version} failed to predict: {err}", 500)
        request.state.rows = len(prediction.labels)
        return JSONResponse(
            {
                "version": model.version,
                "predictions": prediction.labels,
                "probabilities": prediction.probabilities,
            }
        )

    async def model(self, request: Request) -> Response:
        model = self._served()
        info = model.info
        return JSONResponse(
            {
                "version": info.version,
                "round": info.round,
                "federation": info.federation,
                "created_at": info.created_at,
                "expires_at": info.expires_at,
                "expired": info.expired(),
                "input_shape": list(model.input_shape),
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


def build_app(settings: ServeSettings, *, store: ModelStore | None = None) -> Starlette:
    """The service for ``settings.store``: loads the current version at start-up (if any),
    then swaps to each newly installed one."""
    holder = ModelHolder(store or ModelStore.reopen(settings.store))
    metrics = ServeMetrics()

    def report(outcome: Refresh) -> None:
        metrics.refreshed(outcome)
        if outcome.change is Change.SWAPPED:
            _log.info("serving version %s", outcome.serving)
        elif outcome.change is not Change.NONE:
            _log.warning("still serving version %s: %s", outcome.serving, outcome.reason)

    report(holder.refresh())
    service = _Service(settings, holder, metrics)
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
