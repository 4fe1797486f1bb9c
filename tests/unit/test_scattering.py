"""The scattering front end: equal to Kymatio's, invariants, and the mnist-scatter task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from federator import TaskError
from federator.client.tasks import MNIST_SCATTER, Optimizer, TrainSettings, resolve_task
from federator.client.tasks.scattering import Scattering2d, scattering_channels
from federator.client.weights import model_arrays
from federator.privacy.dpsgd import DpSgd
from federator.simulations.datasets import load_dataset

# Computed with Kymatio 0.3.0's ScatteringTorch2D(J=2, shape=(28, 28)) on the first two
# bundled MNIST digits (an independent implementation; Kymatio is not installed here).
KYMATIO_ORDER_SUMS = (11.779824420809746, 162.79318413169676, 90.17464426220977)
KYMATIO_COEFFICIENTS = {
    (0, 0, 3, 3): 0.6683176755905151,
    (0, 5, 2, 4): 0.1564411222934723,
    (0, 12, 3, 3): 0.15856361389160156,
    (1, 16, 4, 2): 0.40582093596458435,
    (1, 17, 3, 3): 0.03207198530435562,
    (0, 40, 1, 5): 0.016355251893401146,
    (1, 63, 3, 4): 0.026151230558753014,
    (1, 80, 5, 5): 0.029306551441550255,
}


def digits(n: int) -> torch.Tensor:
    return torch.from_numpy(load_dataset("mnist").x[:n].copy())


def test_features_equal_kymatios() -> None:
    out = Scattering2d((28, 28), j=2, angles=8)(digits(2)).double()
    assert out.shape == (2, 81, 7, 7)
    sums = (out[:, :1].sum(), out[:, 1:17].sum(), out[:, 17:].sum())
    for ours, theirs in zip(sums, KYMATIO_ORDER_SUMS, strict=True):
        assert float(ours) == pytest.approx(theirs, rel=1e-5)
    for index, value in KYMATIO_COEFFICIENTS.items():
        assert float(out[index]) == pytest.approx(value, rel=1e-4, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(8, 40),
    width=st.integers(8, 40),
    j=st.integers(1, 2),
    angles=st.integers(1, 8),
    channels=st.integers(1, 3),
)
def test_output_shape(height: int, width: int, j: int, angles: int, channels: int) -> None:
    x = torch.rand(2, channels, height, width)
    out = Scattering2d((height, width), j=j, angles=angles)(x)
    k = scattering_channels(j=j, angles=angles)
    assert out.shape == (2, channels * k, height // 2**j, width // 2**j)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_positively_homogeneous(scale: float, seed: int) -> None:
    """Every step is linear or a modulus, so S(a·x) = a·S(x) for a > 0."""
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    scattering = Scattering2d((16, 16), j=2, angles=4)
    torch.testing.assert_close(
        scattering(scale * x), scale * scattering(x), rtol=1e-4, atol=1e-5 * scale
    )


def test_a_constant_image_has_only_its_average() -> None:
    """Wavelets have zero mean: nothing but the low-pass sees a flat image."""
    out = Scattering2d((28, 28))(torch.full((1, 1, 28, 28), 0.7))
    torch.testing.assert_close(out[:, 0], torch.full((1, 7, 7), 0.7), rtol=2e-3, atol=0)
    assert float(out[:, 1:].abs().max()) < 1e-5


def test_no_parameters_and_nothing_exchanged() -> None:
    scattering = Scattering2d((28, 28))
    assert list(scattering.parameters()) == []
    assert scattering.state_dict() == {}
    assert set(model_arrays(MNIST_SCATTER.build_model()).keys()) == {"3.weight", "3.bias"}


def test_bad_input_is_named() -> None:
    with pytest.raises(TaskError, match=r"expects \(batch, channels, \(28, 28\)\)"):
        Scattering2d((28, 28))(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TaskError, match="J ≥ 1"):
        Scattering2d((28, 28), j=0)
    with pytest.raises(TaskError, match="too small"):
        Scattering2d((4, 4), j=2)


def test_mnist_scatter_learns_under_dp_sgd() -> None:
    """Opacus trains the linear head through the fixed front end, and it learns."""
    assert resolve_task("mnist-scatter") is MNIST_SCATTER
    data = load_dataset("mnist").subset(np.arange(600))
    torch.manual_seed(0)
    model = MNIST_SCATTER.build_model()
    before = MNIST_SCATTER.evaluate(model, data).accuracy
    dp = DpSgd(noise_multiplier=0.5, max_grad_norm=0.25, noise_seed=1)
    settings_ = TrainSettings(
        epochs=3, batch_size=100, optimizer=Optimizer.SGD, lr=4.0, momentum=0.5, seed=1, dp=dp
    )
    metrics = MNIST_SCATTER.train(model, data, settings_)
    assert metrics["dp-steps"] > 0
    assert MNIST_SCATTER.evaluate(model, data).accuracy > max(before + 0.4, 0.8)
