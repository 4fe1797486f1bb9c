"""`federator run CONFIG --coordinator ADDR`: submit a federation to a running coordinator.

The same federation config as in simulation, validated here first (a bad config starts
nothing), then sent — resolved, as JSON in the run config — with ``flwr run`` to the
coordinator's SuperLink over TLS. The ServerApp on the coordinator runs it exactly as
``federator simulate`` does (rounds, gate, MLflow versions, signed releases); its progress
and closing summary stream back to this terminal.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from federator.client._processes import flower_command, flower_env
from federator.server.coordinator import write_flwr_home
from federator.server.plan import FederationPlan

APP_DIR = Path(__file__).resolve().parent / "flwr_app"
SUBMITTED_KEY = "federation-config-json"


def submitted_config(plan: FederationPlan) -> dict[str, Any]:
    """The resolved config to send, with local paths made absolute (the coordinator's
    ServerApp resolves nothing against the submitter's working directory)."""
    raw = json.loads(json.dumps(plan.resolved))
    raw["tracking"]["runs_dir"] = str(Path(raw["tracking"]["runs_dir"]).resolve())
    release = raw.get("release") or {}
    for key in ("signing_key", "public_key"):
        if release.get(key):
            release[key] = str(Path(release[key]).resolve())
    return dict(raw)


def encode_config(raw: dict[str, Any]) -> str:
    """Run-config-safe text (Flower's run config is ``key='value'`` pairs)."""
    return base64.urlsafe_b64encode(json.dumps(raw, sort_keys=True).encode()).decode()


def decode_config(text: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text.encode()))
    return decoded


def submit_run(
    plan: FederationPlan,
    *,
    coordinator: str,
    ca_cert: Path,
    federation: str,
    state: Path,
    timeout: float | None = None,
) -> int:
    """Submit ``plan`` and stream its logs until it ends; returns ``flwr run``'s exit code."""
    home = write_flwr_home(
        state / "flwr-submit", federation=federation, address=coordinator, ca_cert=ca_cert
    )
    run_config = f"{SUBMITTED_KEY}='{encode_config(submitted_config(plan))}'"
    argv = [
        flower_command("flwr"),
        "run",
        str(APP_DIR),
        federation,
        "--stream",
        "--run-config",
        run_config,
    ]
    return subprocess.run(argv, env=flower_env(home), timeout=timeout, check=False).returncode


__all__ = ["APP_DIR", "SUBMITTED_KEY", "decode_config", "encode_config", "submit_run"]
