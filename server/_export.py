"""MLflow pytorch-flavour export in a separate, low-priority process.

Exporting a model as pt2 (``torch.export``) costs hundreds of milliseconds of CPU per round;
done in the coordinator's own process it competes with the round loop for the GIL, and on a
small machine with the clients for the CPU. One child process at the lowest scheduling
priority does it instead: it runs when the cores are idle (between rounds, while clients wait
on the network), and the coordinator's tracking thread only waits for its answer.

The child is a plain ``python -m federator.server._export_child`` speaking one JSON line per job
(so it never re-imports the caller's ``__main__``, as ``multiprocessing`` spawn would).
Weights reach it as a safetensors file and the input example as a ``.npy`` file read with
``allow_pickle=False``: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from federator import TrackingError


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
            [sys.executable, "-m", "federator.server._export_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            env=env,
            start_new_session=True,  # its own session, hence its own autogroup
        )

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
