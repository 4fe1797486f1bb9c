"""Built-in tasks: ``mnist-cnn`` and ``digits-mlp``.

Both models avoid BatchNorm so that the same architectures work under Opacus DP-SGD.
"""

from __future__ import annotations

from torch import nn

from federator.client.tasks.classification import ClassificationTask


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


def digits_mlp() -> nn.Module:
    """A one-hidden-layer MLP for scikit-learn's 64-feature digits."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


MNIST_CNN = ClassificationTask(
    name="mnist-cnn", dataset="mnist", input_shape=(1, 28, 28), model_factory=mnist_cnn
)
DIGITS_MLP = ClassificationTask(
    name="digits-mlp", dataset="digits", input_shape=(64,), model_factory=digits_mlp
)
