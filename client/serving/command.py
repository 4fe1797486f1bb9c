"""``federator node serve --store DIR``: serve the installed model over HTTP until stopped.

Registered on the ``federator node`` command group by `federator.client.cli`. Everything is
checked before the port opens — the store, the token file (private, not empty), the TLS pair
— so a bad setting starts nothing. uvicorn runs the Starlette app (`http.build_app`) in one
or more worker processes; the settings reach each worker as JSON in `SETTINGS_ENV` (the
token's file, not the token).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import RootModel
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette

from federator import ConfigError
from federator.client.serving.drift import Reference
from federator.client.serving.events import reference_path
from federator.client.serving.inputs import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, Limits
from federator.client.serving.metrics import MULTIPROC_ENV
from federator.client.serving.monitor import DEFAULT_WINDOW_ROWS
from federator.client.serving.rollout import RolloutPolicy, Stage

if TYPE_CHECKING:
    from federator.client.store import ModelStore

SETTINGS_ENV = "FEDERATOR_SERVE_SETTINGS"
DEFAULT_PORT = 8470
out = Console()


def node_serve(
    store: Annotated[Path, typer.Option("--store", help="The node's model store folder.")],
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 1,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Require 'Authorization: Bearer <token in file>'."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="... and this private key.")
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="Largest request body accepted.")
    ] = DEFAULT_MAX_BODY_BYTES,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, help="Most rows in one request.")
    ] = DEFAULT_MAX_ROWS,
    poll: Annotated[
        float,
        typer.Option("--poll", min=0.05, help="Seconds between looks for a newly installed model."),
    ] = 1.0,
    rollout: Annotated[
        str,
        typer.Option(
            "--rollout",
            help="Stages a new version goes through before it answers everything: "
            "'shadow', 'canary', 'shadow,canary', or 'direct' (at once).",
        ),
    ] = "direct",
    shadow_requests: Annotated[
        int, typer.Option("--shadow-requests", help="Requests a candidate shadows.")
    ] = 200,
    canary_fraction: Annotated[
        float, typer.Option("--canary-fraction", help="Share of requests a canary answers.")
    ] = 0.1,
    canary_requests: Annotated[
        int, typer.Option("--canary-requests", help="Requests a canary answers.")
    ] = 200,
    max_latency_ms: Annotated[
        float | None,
        typer.Option("--max-latency-ms", help="Fall back if a new version's median is slower."),
    ] = None,
    fallback: Annotated[
        bool,
        typer.Option(
            "--fallback/--no-fallback",
            help="Roll back to the previous version if a new one fails or is too slow.",
        ),
    ] = True,
    watch_requests: Annotated[
        int,
        typer.Option(
            "--watch-requests", help="Requests a promoted version answers with a fall-back."
        ),
    ] = 100,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Drift reference (default: STORE/serving/reference.npz, which node start "
            "writes from its training data).",
        ),
    ] = None,
    drift_window: Annotated[
        int, typer.Option("--drift-window", min=10, help="Rows per traffic/drift window.")
    ] = DEFAULT_WINDOW_ROWS,
) -> None:
    """Serve the store's current model (swapping to each new one) until Ctrl-C."""
    import uvicorn

    from federator.client.actions import run_action
    from federator.client.store import ModelStore

    def go() -> None:
        opened = ModelStore.reopen(store)  # a clear error if it is no store
        token = _read_token(token_file) if token_file else None  # checked here, read per worker
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for path in (tls_cert, tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path}: no such file")
        policy = rollout_policy(
            rollout,
            shadow_requests=shadow_requests,
            canary_fraction=canary_fraction,
            canary_requests=canary_requests,
            max_latency_ms=max_latency_ms,
            fallback=fallback,
            watch_requests=watch_requests,
        )
        drift = reference or reference_path(store)
        if reference is not None and not reference.is_file():
            raise ConfigError(f"--reference {reference}: no such file")
        if drift.is_file():
            Reference.load(drift)  # a clear error now, not in every worker
        settings = {
            "reference": str(drift.resolve()) if drift.is_file() else None,
            "window_rows": drift_window,
            "rollout": RootModel[RolloutPolicy](policy).model_dump(mode="json"),
            "store": str(store.resolve()),
            "token_file": str(token_file.resolve()) if token_file else None,
            "max_body_bytes": max_body_bytes,
            "max_rows": max_rows,
            "poll_interval": poll,
        }
        os.environ[SETTINGS_ENV] = json.dumps(settings)
        if workers > 1:
            os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="federator-serve-metrics-")
        scheme = "https" if tls_cert else "http"
        out.print(_table(opened, f"{scheme}://{host}:{port}", token, workers, tls_cert, policy))
        out.file.flush()
        uvicorn.run(
            "federator.client.serving.command:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            log_level="info",
            log_config=_log_config(),
            access_log=False,
            ws="none",  # no websockets (and none of their deprecated modules)
        )
        out.print("service stopped")

    run_action(go)


def _log_config() -> dict[str, Any]:
    """Uvicorn's logging, with the service's own logger (swaps, roll-out steps, prediction
    failures) beside it at INFO, in every worker."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["federator.serve"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _read_token(path: Path) -> str:
    from federator.client.certs import check_private_mode

    if not path.is_file():
        raise ConfigError(f"--token-file {path}: no such file")
    check_private_mode(path)
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: a token needs at least 16 characters")
    return token


def rollout_policy(stages: str, **options: object) -> RolloutPolicy:
    """``--rollout`` and its options as a `RolloutPolicy`; `ConfigError` naming what is
    wrong."""
    names = [] if stages.strip() == "direct" else [s.strip() for s in stages.split(",")]
    try:
        chosen = tuple(Stage(n) for n in names)
        return RolloutPolicy(stages=chosen, **options)  # type: ignore[arg-type]
    except ValueError as err:  # an unknown stage name, or pydantic's ValidationError
        raise ConfigError(f"--rollout {stages!r}: {err}") from None


def _table(
    store: ModelStore,
    url: str,
    token: str | None,
    workers: int,
    tls: Path | None,
    policy: RolloutPolicy,
) -> Table:
    current = store.current_version()
    table = Table(title="Model service", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for row in (
        ("store", str(store.root)),
        ("serving", f"version {current}" if current else "nothing yet (503 until installed)"),
        ("listening", url),
        ("auth", "bearer token" if token else "none (anyone who reaches the port)"),
        ("TLS", str(tls) if tls else "off"),
        ("workers", str(workers)),
        ("roll-out", _describe(policy)),
        ("routes", "POST /predict, GET /model, GET /health, GET /metrics"),
    ):
        table.add_row(*row)
    return table


def _describe(policy: RolloutPolicy) -> str:
    steps = [
        f"shadow {policy.shadow_requests} requests"
        if s is Stage.SHADOW
        else f"canary {policy.canary_fraction:.0%} for {policy.canary_requests} requests"
        for s in policy.stages
    ] or ["at once"]
    slow = f" or a median over {policy.max_latency_ms:g} ms" if policy.max_latency_ms else ""
    guard = f"; falls back on an error{slow}" if policy.fallback else "; no fall-back"
    return " → ".join(steps) + guard


def app_from_env() -> Starlette:
    """The app for one uvicorn worker, from the settings `node_serve` put in the env."""
    from federator.client.serving.http import ServeSettings, build_app

    raw = json.loads(os.environ[SETTINGS_ENV])
    return build_app(
        ServeSettings(
            store=Path(raw["store"]),
            token=_read_token(Path(raw["token_file"])) if raw["token_file"] else None,
            limits=Limits(max_body_bytes=raw["max_body_bytes"], max_rows=raw["max_rows"]),
            poll_interval=raw["poll_interval"],
            rollout=RootModel[RolloutPolicy].model_validate(raw["rollout"]).root,
            reference=Path(raw["reference"]) if raw["reference"] else None,
            window_rows=raw["window_rows"],
        )
    )


__all__ = ["DEFAULT_PORT", "SETTINGS_ENV", "app_from_env", "node_serve"]
