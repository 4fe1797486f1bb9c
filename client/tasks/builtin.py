"""Built-in tasks: ``mnist-cnn``, ``mnist-scatter`` and ``digits-mlp``.

All models avoid BatchNorm so that the same architectures work under Opacus DP-SGD.
"""

from __future__ import annotations

from torch import nn

from federator.client.tasks.classification import ClassificationTask
from federator.client.tasks.scattering import Scattering2d, scattering_channels


def mnist_cnn() -> nn.Module:
    """A small LeNet-style CNN for 1×28×28 digits (≈114k parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def mnist_scatter() -> nn.Module:
    """ScatterNet + linear of Tramèr & Boneh 2021 for 1×28×28 digits (39,700 parameters).

    The model to train under DP-SGD: a fixed scattering (J = 2, 81 channels of 7×7, no
    parameters, nothing exchanged), per-example group normalisation without parameters (27
    groups, as in that paper), then one linear layer — the only weights clients train and send.
    """
    channels = scattering_channels(j=2, angles=8)
    return nn.Sequential(
        Scattering2d((28, 28), j=2, angles=8),
        nn.GroupNorm(channels // 3, channels, affine=False),
        nn.Flatten(),
        nn.Linear(channels * 7 * 7, 10),
    )


def digits_mlp() -> nn.Module:
    """A one-hidden-layer MLP for scikit-learn's 64-feature digits."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


MNIST_CNN = ClassificationTask(
    name="mnist-cnn", dataset="mnist", input_shape=(1, 28, 28), model_factory=mnist_cnn
)
MNIST_SCATTER = ClassificationTask(
    name="mnist-scatter", dataset="mnist", input_shape=(1, 28, 28), model_factory=mnist_scatter
)
DIGITS_MLP = ClassificationTask(
    name="digits-mlp", dataset="digits", input_shape=(64,), model_factory=digits_mlp
)
