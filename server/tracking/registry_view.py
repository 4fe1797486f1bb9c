"""``federator models list``: the registry's versions of a federation's model, with their
gate decisions and aliases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federator import TrackingError
from federator.server.tracking import mlflow_io as io


@dataclass(frozen=True)
class VersionRow:
    """One registered model version as listed for a person."""

    version: int
    round: str
    decision: str
    val_accuracy: str
    aliases: tuple[str, ...]
    run_id: str
    reasons: str


def list_versions(client: Any, model: str) -> list[VersionRow]:
    """All versions of ``model``, newest first; `TrackingError` if it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model)
        versions = client.search_model_versions(f"name = '{model}'")
    except MlflowException as err:
        if str(getattr(err, "error_code", "")) == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"no registered model named {model!r} in this store") from None
        raise TrackingError(f"cannot list versions of {model!r}: {err}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = [
        VersionRow(
            version=int(v.version),
            round=v.tags.get("federator.round", "?"),
            decision=v.tags.get("federator.gate.decision", "?"),
            val_accuracy=v.tags.get("federator.val_accuracy", "?"),
            aliases=tuple(sorted(aliases.get(str(v.version), []))),
            run_id=v.run_id or "",
            reasons=v.tags.get("federator.gate.reasons", ""),
        )
        for v in versions
    ]
    return sorted(rows, key=lambda r: r.version, reverse=True)


def open_client(uri: str) -> Any:
    """A client for ``uri`` after checking it can be reached."""
    io.quiet_mlflow_env()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run a "
            "federation first, or pass --tracking-uri"
        )
    io.preflight(uri, artifact_location=None)
    return io.make_client(uri)


def export_release(client: Any, model: str, version: int, out: Path) -> list[str]:
    """Download version ``version``'s signed release into ``out``; returns the file names."""
    from mlflow.exceptions import MlflowException

    from federator.client.bundle import BUNDLE_FILES
    from federator.client.release import RELEASED_FILES

    try:
        mv = client.get_model_version(model, str(version))
        run_round = int(mv.tags["federator.round"])
    except (MlflowException, KeyError):
        raise TrackingError(f"{model} has no version {version} made by Federator") from None
    if "federator.release.key_id" not in mv.tags:
        raise TrackingError(
            f"{model} version {version} was never released (not a champion, or releases were off)"
        )
    out.mkdir(parents=True, exist_ok=True)
    base = f"models/round-{run_round:04d}"
    names = [*RELEASED_FILES, "release/envelope.json"]
    if "federator.task_bundle" in mv.tags:  # the task bundle travels with the release
        names += [f"release/{name}" for name in BUNDLE_FILES]
    for name in names:
        local = Path(client.download_artifacts(mv.run_id, f"{base}/{name}", str(out)))
        target = out / Path(name).name
        if local != target:
            local.replace(target)
    release_dir = out / "release"
    if release_dir.is_dir():
        for leftover in release_dir.iterdir():
            leftover.unlink()
        release_dir.rmdir()
    return sorted(Path(n).name for n in names)
