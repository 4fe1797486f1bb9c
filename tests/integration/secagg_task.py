"""A user task (``secagg_task:task``) that records each client's update and drops out on cue.

It trains exactly like ``digits-mlp`` and, in the folder named by ``SECAGG_TEST_DIR``, writes
every client's model before and after training, so a test can compute the exact weighted mean
of the survivors' updates independently of SecAgg+. ``SECAGG_TEST_DROPS`` ("round:count,…")
makes that many clients of a round refuse after training, i.e. drop out in SecAgg+'s
"collect masked vectors" stage; the first clients to claim a drop slot are the ones to drop.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from federator import TaskError
from federator.client.tasks import DIGITS_MLP, Evaluation, TrainSettings
from federator.simulations.datasets import ArrayData


def _round_of(folder: Path, data: ArrayData) -> tuple[int, str]:
    """This client's round number (each client trains once per round, even when dropping)."""
    fingerprint = hashlib.sha256(data.x.tobytes() + data.y.tobytes()).hexdigest()[:12]
    counter = folder / f"count-{fingerprint}"
    rnd = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(rnd))
    return rnd, fingerprint


def _drops(rnd: int) -> int:
    spec = os.environ.get("SECAGG_TEST_DROPS", "")
    table = dict(item.split(":") for item in spec.split(",") if item)
    return int(table.get(str(rnd), 0))


def _claims_drop(folder: Path, rnd: int) -> bool:
    for slot in range(_drops(rnd)):
        try:
            os.close(os.open(folder / f"drop-{rnd}-{slot}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        return True
    return False


class SecAggTask:
    name = "secagg-digits"
    dataset = "digits"
    input_shape = (64,)
    supports_local_dp = False

    def build_model(self) -> torch.nn.Module:
        return DIGITS_MLP.build_model()

    def train(
        self, model: torch.nn.Module, data: ArrayData, settings: TrainSettings
    ) -> dict[str, float]:
        folder = Path(os.environ["SECAGG_TEST_DIR"])
        rnd, fingerprint = _round_of(folder, data)
        before = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        metrics = DIGITS_MLP.train(model, data, settings)
        after = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        dropped = _claims_drop(folder, rnd)
        np.savez(
            folder / f"round-{rnd}-{'dropped' if dropped else 'sent'}-{fingerprint}.npz",
            n=np.array(len(data)),
            **{f"before/{k}": v for k, v in before.items()},
            **{f"after/{k}": v for k, v in after.items()},
        )
        if dropped:
            raise TaskError(f"injected dropout in round {rnd}")
        return metrics

    def evaluate(self, model: torch.nn.Module, data: ArrayData) -> Evaluation:
        return DIGITS_MLP.evaluate(model, data)


task = SecAggTask()
