"""The installed version's accuracy on a node's own data (the champion's client-side
accuracy), from the node's evaluation to the coordinator's ``[retrain]`` decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from releases_for_tests import install
from safetensors.numpy import load_file

from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.accuracy import installed_accuracy
from federator.client.serving.report import parse_report, serving_report
from federator.client.store import ModelStore
from federator.client.tasks import DIGITS_MLP
from federator.simulations.datasets import ArrayData


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    keys = generate_keys(tmp_path / "keys")
    opened = ModelStore.open(tmp_path / "node", pinned_key=keys.public, model="m", keep=3)
    install(opened, load_private_key(keys.private), tmp_path, 1)
    install(opened, load_private_key(keys.private), tmp_path, 2)
    return opened


@pytest.fixture
def val() -> ArrayData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return ArrayData((digits.data[:300] / 16).astype(np.float32), digits.target[:300])


def _by_hand(store: ModelStore, version: int, val: ArrayData) -> float:
    """The version's accuracy computed without the task's evaluate: weights read straight
    from the stored safetensors, one forward pass, argmax against the labels."""
    model = DIGITS_MLP.build_model()
    weights = load_file(str(store.root / "versions" / str(version) / "weights.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        predicted = model(torch.from_numpy(val.x)).argmax(dim=1).numpy()
    return float((predicted == val.y).mean())


def test_the_installed_version_is_evaluated_once_per_run(
    store: ModelStore, val: ArrayData, tmp_path: Path
) -> None:
    measured = installed_accuracy(store.root, run=7, task=DIGITS_MLP, val=val)
    assert measured is not None
    assert (measured.version, measured.examples) == (2, 300)
    assert measured.accuracy == pytest.approx(_by_hand(store, 2, val), abs=1e-12)
    # Kept for the rest of run 7, even once a version trained in run 7 is installed (the node
    # has just reported its accuracy for its round): the weights are not even read again.
    (store.root / "versions" / "2" / "weights.safetensors").write_bytes(b"damaged")
    store.rollback()
    assert installed_accuracy(store.root, run=7, task=DIGITS_MLP, val=val) == measured
    # Run 8 measures what is installed now.
    again = installed_accuracy(store.root, run=8, task=DIGITS_MLP, val=val)
    assert again is not None
    assert again.version == 1
    assert again.accuracy == pytest.approx(_by_hand(store, 1, val), abs=1e-12)


def test_a_damaged_version_or_another_input_shape_is_not_reported(
    store: ModelStore, val: ArrayData
) -> None:
    (store.root / "versions" / "2" / "weights.safetensors").write_bytes(b"damaged")
    assert installed_accuracy(store.root, run=7, task=DIGITS_MLP, val=val) is None
    store.rollback()
    images = ArrayData(np.zeros((5, 1, 8, 8), np.float32), np.zeros(5, np.int64))

    class Images:  # the instructed task expects another input shape than the stored one
        input_shape = (1, 8, 8)

    assert installed_accuracy(store.root, run=9, task=Images(), val=images) is None  # type: ignore[arg-type]


def test_it_rides_in_the_report_even_without_a_service(tmp_path: Path, store: ModelStore) -> None:
    from federator.client.serving.report import InstalledAccuracy

    measured = InstalledAccuracy(version=2, accuracy=0.5, examples=10)
    assert serving_report(tmp_path / "no-store") is None
    text = serving_report(tmp_path / "no-store", installed=measured)
    assert text is not None
    report = parse_report(text)
    assert report.installed == measured
    assert report.service is False
    from federator.server.federation.monitoring import NodeServing, serving_metrics

    logged = serving_metrics([NodeServing(pseudonym="p", report=report)])
    assert logged == {"serving/p/installed_accuracy": 0.5, "serving/p/installed_version": 2}
