"""`federator run CONFIG --coordinator ADDR`: submit a federation to a running coordinator.

The same federation config as in simulation, validated here first (a bad config starts
nothing), then sent — resolved, as JSON in the run config — with ``flwr run`` to the
coordinator's SuperLink over TLS. The ServerApp on the coordinator runs it exactly as
``federator simulate`` does (rounds, gate, MLflow versions, signed releases); its progress
and closing summary stream back to this terminal.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from federator import DeploymentError
from federator.client.bundle import TaskBundle, bundle_run_config
from federator.client.processes import flower_command, flower_env
from federator.server.deploy.coordinator import flwr_cli, write_flwr_home
from federator.server.federation.run_config import (
    NODE_KEYS_KEY,
    RESUME_KEY,
    STOCK_FLOWER_KEY,
    SUBMITTED_KEY,
    decode_config,
    encode_config,
)
from federator.server.plan import FederationPlan, build_plan, for_deployment, read_config_file
from federator.server.plan.overrides import Override, apply_overrides

APP_DIR = Path(__file__).resolve().parent / "flwr_app"
_STARTED = re.compile(r"Successfully started run (\d+)")


def _echo(line: str) -> None:
    print(line, flush=True)


def submitted_config(
    path: Path, *, overrides: Sequence[Override] = ()
) -> tuple[FederationPlan, dict[str, Any]]:
    """The config at ``path`` with ``overrides``, validated, and as it will be sent: local
    paths made absolute (the coordinator's ServerApp resolves nothing against the
    submitter's working directory). Defaults are left for the coordinator to fill in."""
    raw = apply_overrides(read_config_file(path), overrides)
    plan = for_deployment(build_plan(raw, source=str(path)))
    raw = json.loads(json.dumps(raw))
    tracking = raw.setdefault("tracking", {})
    tracking["runs_dir"] = str(plan.tracking.runs_dir.resolve())
    release = raw.get("release") or {}
    for key in ("signing_key", "public_key"):
        if release.get(key):
            release[key] = str(Path(release[key]).resolve())
    return plan, dict(raw)


def submit_run(
    raw: dict[str, Any],
    *,
    coordinator: str,
    ca_cert: Path,
    federation: str,
    state: Path,
    timeout: float | None = None,
    resume: str | None = None,
    stock_flower: bool = False,
    bundle: TaskBundle | None = None,
    node_keys: Path | None = None,
    echo: Callable[[str], None] = _echo,
) -> str:
    """Submit the config ``raw`` (from `submitted_config`), stream its logs (to ``echo``)
    until it ends, and return the run's final status (``finished:completed`` on success).

    ``flwr run --stream`` exits 0 even when the ServerApp failed, so the status is asked of
    the SuperLink afterwards. ``resume``: an MLflow run id to continue after its last
    checkpoint (after a coordinator restart). ``stock_flower``: the ServerApp uses none of
    Federator's Flower patches. ``bundle``: the task's signed bundle (`pack_task`), which the
    run config carries to the ServerApp and every node. ``node_keys``: the coordinator kit's
    ``nodes/`` folder, whose keys each node must prove it holds (None: names unchecked).
    `DeploymentError` if nothing was submitted."""
    home = write_flwr_home(
        state / "flwr-submit", federation=federation, address=coordinator, ca_cert=ca_cert
    )
    run_config = write_run_config(
        run_config_entries(
            raw, resume=resume, stock_flower=stock_flower, bundle=bundle, node_keys=node_keys
        ),
        state / "flwr-submit" / "run-config.toml",
    )
    argv = [
        flower_command("flwr"),
        "run",
        str(APP_DIR),
        federation,
        "--stream",
        "--run-config",
        str(run_config),
    ]
    run_id = None
    with subprocess.Popen(
        argv,
        env=flower_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line.rstrip("\n"))
            if run_id is None and (m := _STARTED.search(line)):
                run_id = m.group(1)
        code = proc.wait(timeout=timeout)
    if run_id is None:
        raise DeploymentError(f"the coordinator did not accept the run (flwr exit {code})")
    return run_status(run_id, home=home, federation=federation)


def run_config_entries(
    raw: dict[str, Any],
    *,
    resume: str | None,
    stock_flower: bool,
    bundle: TaskBundle | None = None,
    node_keys: Path | None = None,
) -> dict[str, str | bool]:
    """The run config of the submitted run: every key must be declared in the App's
    pyproject (``flwr_app/pyproject.toml``), or the SuperLink refuses the run."""
    entries: dict[str, str | bool] = {SUBMITTED_KEY: encode_config(raw)}
    if resume:
        if not resume.isalnum():
            raise DeploymentError(f"--resume: {resume!r} is not an MLflow run id")
        entries[RESUME_KEY] = resume
    if stock_flower:
        entries[STOCK_FLOWER_KEY] = True
    if bundle is not None:
        entries |= bundle_run_config(bundle)
    if node_keys is not None:
        entries[NODE_KEYS_KEY] = str(node_keys.resolve())
    return entries


def write_run_config(entries: dict[str, str | bool], path: Path) -> Path:
    """``entries`` as the TOML file ``flwr run --run-config`` reads: a file, because one
    command-line argument holds at most 128 KiB and a task bundle may be bigger. The values
    are base64 text, ``true`` or plain ids: no TOML escaping is needed beyond JSON's."""
    lines = [
        f"{key} = {'true' if value is True else json.dumps(value)}"
        for key, value in entries.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def run_status(run_id: str, *, home: Path, federation: str) -> str:
    """The SuperLink's status text of run ``run_id`` (e.g. ``finished:failed``)."""
    probe = flwr_cli(["ls", federation, "--run-id", run_id, "--format", "json"], home=home)
    try:
        runs = json.loads(probe.stdout)["runs"]
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise DeploymentError(
            f"cannot read the status of run {run_id}: {probe.stdout[-500:]}{probe.stderr[-500:]}"
        ) from None


__all__ = [
    "APP_DIR",
    "RESUME_KEY",
    "SUBMITTED_KEY",
    "decode_config",
    "encode_config",
    "run_config_entries",
    "run_status",
    "submit_run",
    "submitted_config",
    "write_run_config",
]
