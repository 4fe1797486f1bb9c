"""A user's own task that no node has installed: scikit-learn's iris data and a small MLP.

The deployment test copies this file next to its federation config; ``federator run`` packs it
into a signed task bundle that the nodes verify, pin and import from their own store.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_iris

from federator.client.tasks import ClassificationTask
from federator.simulations.datasets import ArrayData


def load() -> ArrayData:
    """Iris, standardised (150 examples, 4 features, 3 species), in a fixed shuffled order."""
    bunch = load_iris()
    x = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    order = np.random.default_rng(0).permutation(len(x))
    return ArrayData(x[order].astype(np.float32), bunch.target[order].astype(np.int64))


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


task = ClassificationTask(
    name="iris-mlp", dataset="iris_task:load", input_shape=(4,), model_factory=make_model
)
