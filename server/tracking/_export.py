"""MLflow pytorch-flavour export in a separate, low-priority process.

Exporting a model as pt2 (``torch.export``) costs hundreds of milliseconds of CPU per round;
done in the coordinator's own process it competes with the round loop for the GIL, and on a
small machine with the clients for the CPU. One child process at the lowest scheduling
priority does it instead: it runs when the cores are idle (between rounds, while clients wait
on the network), and the coordinator's tracking thread only waits for its answer.

Nothing waits for it but the very end of a federation: a version is registered and
checkpointed with its weights alone, and `FlavourExports` attaches the flavour to the version's
artifact folder when the child gets to it (under full load that may be only after the last
round). Its queue holds file paths, not models, so it costs no memory while it waits.

The child is a plain ``python -m federator.server.tracking._export_child`` speaking one JSON
line per job (so it never re-imports the caller's ``__main__``, as ``multiprocessing`` spawn
would). Weights reach it as a safetensors file and the input example as a ``.npy`` file read with
``allow_pickle=False``: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from federator import TrackingError
from federator.server.tracking._worker import OrderedWorker
from federator.server.tracking.mlflow_io import TAG_LIMIT

FLAVOUR_TAG = "federator.flavour"


class FlavourState(StrEnum):
    """Whether a model version's pytorch flavour is attached (its ``federator.flavour`` tag)."""

    PENDING = "pending"  # registered with weights and lineage; the export is queued
    SKIPPED = "skipped"  # tracking.export_flavour = false: weights and lineage only
    READY = "pytorch"  # loadable with mlflow.pytorch.load_model
    FAILED = "failed"  # the export raised; a resume tries again


def lowest_priority() -> None:
    """Runs first thing in the child. Linux groups processes by session ("autogroups") and
    shares the CPU between groups first, so a plain ``nice`` would only yield to our own
    process. In its own session, the child lowers its group's weight and runs SCHED_IDLE:
    it gets the CPU when clients and the round loop do not want it."""
    os.nice(19)
    with contextlib.suppress(OSError):  # no autogroups on this kernel: nice alone applies
        Path("/proc/self/autogroup").write_text("19")
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class ModelExporter:
    """One background process that writes MLflow model folders, one at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        # The child must import whatever this process can (a user's task module, for one).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).exists())
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        return subprocess.Popen(
            [sys.executable, "-m", "federator.server.tracking._export_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            env=env,
            start_new_session=True,  # its own session, hence its own autogroup
        )

    def start(self) -> None:
        """Start the child now, so that its start-up (importing torch and MLflow, warming
        up torch.export: seconds of CPU) is over before the first round, not spread over
        the first rounds at the lowest priority."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()

    def export(self, *, task_ref: str, weights: Path, example: Path, out: Path) -> Path:
        """Write the MLflow pytorch model for ``weights`` into ``out``. Blocks the calling
        thread (not the process) until the child answers."""
        import torch

        job = {
            "task": task_ref,
            "weights": str(weights),
            "example": str(example),
            "out": str(out),
            "requirement": f"torch=={torch.__version__.split('+')[0]}",
        }
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            assert self._proc.stdin is not None
            assert self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(job) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise TrackingError("the model export process died (see its error output above)")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise TrackingError(f"exporting the MLflow model failed: {answer.get('error')}")
        return Path(answer["out"])

    def close(self) -> None:
        """Stop the child process (after any export in progress)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()  # EOF: the child's loop ends
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@dataclass(frozen=True, kw_only=True)
class FlavourJob:
    """One version whose flavour is to be exported from ``weights``."""

    version: str
    round: int
    weights: Path


@dataclass(frozen=True, kw_only=True)
class FlavourFailure:
    version: str
    round: int
    error: str


class FlavourExports:
    """Exports the flavour of each queued version, in order, on a thread of its own.

    The export runs in the low-priority child; its MLflow writes (uploading the folder into
    the version's ``models/round-NNNN``, the ``federator.flavour`` tag) are handed to
    ``submit``, the tracking writer, so MLflow is written from one thread. An export that
    raises tags its version ``failed`` and the queue goes on with the next one.
    """

    def __init__(
        self,
        *,
        exporter: ModelExporter,
        client: Any,
        run_id: str,
        model: str,
        task_ref: str,
        example: Path,
        submit: Callable[[str, Callable[[], None]], None],
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled  # False: nothing is exported and no child is started
        self._exporter = exporter
        self._client = client
        self._run_id = run_id
        self._model = model
        self._task_ref = task_ref
        self._example = example
        self._submit = submit
        self._failures: list[FlavourFailure] = []
        self._abandoned = threading.Event()
        self._worker = OrderedWorker("federator-export")
        if enabled:
            self._worker.submit("start the export process", exporter.start)

    def add(self, job: FlavourJob) -> None:
        if not self._enabled:
            return
        self._worker.submit(f"export version {job.version}", lambda: self._run(job))

    def abandon(self) -> None:
        """Skip what is queued (after a failure: a resume exports it)."""
        self._abandoned.set()

    def _run(self, job: FlavourJob) -> None:
        if self._abandoned.is_set():
            return
        out = job.weights.parent.with_name(f"flavour-{job.round:04d}")
        try:
            folder = self._exporter.export(
                task_ref=self._task_ref, weights=job.weights, example=self._example, out=out
            )
        except (TrackingError, OSError, ValueError) as err:
            error = str(err)
            self._failures.append(FlavourFailure(version=job.version, round=job.round, error=error))
            self._submit(
                f"flavour failure of version {job.version}", lambda: self._tag_failed(job, error)
            )
            return
        self._submit(f"pytorch flavour of version {job.version}", lambda: self._attach(job, folder))

    def _attach(self, job: FlavourJob, folder: Path) -> None:
        self._client.log_artifacts(
            self._run_id, str(folder), artifact_path=f"models/round-{job.round:04d}"
        )
        self._client.set_model_version_tag(
            self._model, job.version, FLAVOUR_TAG, FlavourState.READY.value
        )
        shutil.rmtree(folder)
        shutil.rmtree(job.weights.parent, ignore_errors=True)  # staging only

    def _tag_failed(self, job: FlavourJob, error: str) -> None:
        self._client.set_model_version_tag(
            self._model, job.version, FLAVOUR_TAG, FlavourState.FAILED.value
        )
        self._client.set_model_version_tag(
            self._model, job.version, f"{FLAVOUR_TAG}.error", error[:TAG_LIMIT]
        )

    def close(self, *, on_wait: Callable[[int], None] | None = None) -> list[FlavourFailure]:
        """Export everything queued (unless abandoned), stop the child; the exports that
        failed."""
        failure = self._worker.close(on_wait=on_wait)
        self._exporter.close()
        if failure is not None:  # a bug in our own code, not a failed export: raise it
            raise TrackingError(f"model export '{failure.label}' failed: {failure.error}")
        return list(self._failures)


def flavour_problem(failures: list[FlavourFailure], run_id: str) -> str:
    """What to tell a person when some flavours could not be exported."""
    versions = ", ".join(f.version for f in failures)
    return (
        f"every round is recorded, but the pytorch flavour of version(s) {versions} could not "
        f"be exported ({failures[0].error}); their weights.safetensors are in MLflow, and "
        f"resuming run {run_id} tries the export again"
    )
