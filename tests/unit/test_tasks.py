"""Tasks: resolution, the user task protocol, deterministic training, FedProx."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from federator import TaskError
from federator.client.tasks import (
    DIGITS_MLP,
    MNIST_CNN,
    MNIST_SCATTER,
    Optimizer,
    TrainSettings,
    resolve_task,
)
from federator.client.weights import model_arrays
from federator.simulations.datasets import load_dataset

SETTINGS = TrainSettings(
    epochs=1, batch_size=32, optimizer=Optimizer.SGD, lr=0.1, momentum=0.9, seed=5
)


def small_digits() -> object:
    return load_dataset("digits").subset(np.arange(200))


def test_builtins_resolve_and_fit_their_data() -> None:
    assert resolve_task("mnist-cnn") is MNIST_CNN
    assert resolve_task("digits-mlp") is DIGITS_MLP
    x = torch.from_numpy(load_dataset("mnist").x[:3])
    assert MNIST_CNN.build_model()(x).shape == (3, 10)
    assert MNIST_SCATTER.build_model()(x).shape == (3, 10)


def test_models_have_no_batchnorm() -> None:
    for task in (MNIST_CNN, MNIST_SCATTER, DIGITS_MLP):
        kinds = {type(m).__name__ for m in task.build_model().modules()}
        assert not any("BatchNorm" in k for k in kinds)


def test_training_is_deterministic_for_a_seed() -> None:
    data = small_digits()
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = DIGITS_MLP.build_model()
        DIGITS_MLP.train(model, data, TrainSettings(**{**SETTINGS.__dict__, "seed": seed}))  # type: ignore[arg-type]
        results.append(np.concatenate([a.numpy().ravel() for a in model_arrays(model).values()]))
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_training_improves_and_evaluate_counts() -> None:
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = DIGITS_MLP.build_model()
    before = DIGITS_MLP.evaluate(model, data)
    metrics = DIGITS_MLP.train(model, data, SETTINGS)
    after = DIGITS_MLP.evaluate(model, data)
    assert after.accuracy > before.accuracy + 0.3
    assert after.num_examples == 1797
    assert set(metrics) == {"train-loss", "train-accuracy"}


def test_fedprox_term_keeps_weights_near_the_global_model() -> None:
    data = small_digits()
    drift = {}
    for mu in (0.0, 100.0):
        torch.manual_seed(0)
        model = DIGITS_MLP.build_model()
        start = torch.cat([p.detach().clone().ravel() for p in model.parameters()])
        DIGITS_MLP.train(
            model,
            data,
            TrainSettings(
                **{
                    **SETTINGS.__dict__,  # type: ignore[arg-type]
                    "proximal_mu": mu,
                    "momentum": 0.0,
                    "lr": 0.005,
                }
            ),
        )
        end = torch.cat([p.detach().ravel() for p in model.parameters()])
        drift[mu] = float((end - start).norm())
    assert drift[100.0] < 0.5 * drift[0.0]


def test_adam_optimizer_trains() -> None:
    torch.manual_seed(0)
    model = DIGITS_MLP.build_model()
    DIGITS_MLP.train(
        model,
        small_digits(),
        TrainSettings(epochs=2, batch_size=16, optimizer=Optimizer.ADAM, lr=0.01),
    )
    assert DIGITS_MLP.evaluate(model, small_digits()).accuracy > 0.6


USER_TASK = """
import torch
from federator.client.tasks import ClassificationTask

def make_model():
    return torch.nn.Sequential(torch.nn.Linear(64, 10))

task = ClassificationTask(name="tiny", dataset="digits", input_shape=(64,),
                          model_factory=make_model)

def factory():
    return task

class Incomplete:
    name = "half"
    def build_model(self):
        return make_model()

half = Incomplete()
"""


def test_user_task_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usertask.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert resolve_task("usertask:task").name == "tiny"
        assert resolve_task("usertask:factory").name == "tiny"
        with pytest.raises(
            TaskError, match="missing: dataset, input_shape, supports_local_dp, train, evaluate"
        ):
            resolve_task("usertask:half")
        with pytest.raises(TaskError, match="has no 'nope'"):
            resolve_task("usertask:nope")
    finally:
        sys.modules.pop("usertask", None)
