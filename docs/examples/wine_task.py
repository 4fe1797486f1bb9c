"""A complete user task for Federator: scikit-learn's wine data and a small MLP.

Run it next to its config (the config's folder is put on the import path, also for the
simulated clients):

    federator validate docs/examples/wine.toml
    federator simulate docs/examples/wine.toml
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_wine

from federator.client.tasks import ClassificationTask
from federator.simulations import ArrayData


def load() -> ArrayData:
    """The whole dataset; Federator holds part out for the server and splits the rest."""
    bunch = load_wine()
    x = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    return ArrayData(x.astype(np.float32), bunch.target.astype(np.int64))


def make_model() -> torch.nn.Module:
    """Called on the server and on every client: same architecture everywhere."""
    return torch.nn.Sequential(torch.nn.Linear(13, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


task = ClassificationTask(
    name="wine-mlp",
    dataset="wine_task:load",
    input_shape=(13,),
    model_factory=make_model,
)
