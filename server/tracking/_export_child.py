"""The model-export child process (see `federator.server.tracking._export`): one JSON line
per job in, one JSON line per answer out. Kept apart so that running it never re-imports itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from federator.server.tracking._export import lowest_priority


def _export(job: dict[str, Any]) -> str:
    import mlflow.pytorch
    import numpy as np
    import torch

    from federator.client.tasks import resolve_task
    from federator.client.weights import load_arrays, load_safetensors

    model = resolve_task(job["task"]).build_model()
    load_arrays(model, load_safetensors(Path(job["weights"])))
    model.eval()
    with torch.no_grad():
        mlflow.pytorch.save_model(
            model,
            job["out"],
            input_example=np.load(job["example"], allow_pickle=False),
            serialization_format="pt2",
            pip_requirements=[job["requirement"]],
        )
    return str(job["out"])


def _warm_up() -> None:
    """Import what an export needs and run torch.export once on a tiny model, at normal
    priority: the first real export then costs tens of milliseconds, not seconds."""
    import tempfile

    import mlflow.pytorch
    import numpy as np
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        mlflow.pytorch.save_model(
            torch.nn.Linear(2, 1),
            f"{tmp}/model",
            input_example=np.zeros((1, 2), np.float32),
            serialization_format="pt2",
            pip_requirements=["torch"],
        )


def _serve(requests: IO[str], answers: IO[str]) -> None:
    for line in requests:
        job = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": True, "out": _export(job)}
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    _warm_up()
    lowest_priority()
    # Keep the protocol channel clean: anything libraries print goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    _serve(sys.stdin, channel)
