"""Raw float32 request bodies (``Content-Type: application/octet-stream``) and models whose
outputs are not finite, at the model service's edge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from releases_for_tests import install, release
from serving_fixtures import Served, serve_app

from federator import PredictionFailed
from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.http import ServeSettings, build_app
from federator.client.serving.inputs import RAW_FLOAT32, Limits, parse_inputs, parse_raw
from federator.client.serving.model import load_served
from federator.client.store import ModelStore
from federator.client.tasks import DIGITS_MLP

RAW = {"Content-Type": RAW_FLOAT32}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    keys = generate_keys(tmp_path / "keys")
    opened = ModelStore.open(tmp_path / "node", pinned_key=keys.public, model="m", keep=3)
    install(opened, load_private_key(keys.private), tmp_path, 1)
    return opened


@pytest.fixture
def client(store: ModelStore) -> Iterator[Served]:
    limits = Limits(max_rows=50, max_body_bytes=20_000)
    with serve_app(build_app(ServeSettings(store=store.root, limits=limits))) as c:
        yield c


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_raw_and_json_bodies_give_the_same_batch(rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, 1, 4, 4)).astype(np.float32)
    raw = parse_raw(x.astype("<f4").tobytes(), input_shape=(1, 4, 4), limits=Limits())
    as_json = parse_inputs(
        json.dumps({"inputs": x.reshape(rows, -1).tolist()}).encode(),
        input_shape=(1, 4, 4),
        limits=Limits(),
    )
    np.testing.assert_array_equal(raw, x)
    np.testing.assert_array_equal(raw, as_json)


def test_raw_predictions_equal_json_ones(client: Served) -> None:
    rows = np.random.default_rng(3).random((4, 64)).astype(np.float32)
    raw = client.post("/predict", content=rows.tobytes(), headers=RAW)
    as_json = client.post("/predict", json={"inputs": rows.tolist()})
    assert raw.status_code == 200, raw.text
    assert raw.json() == as_json.json()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 422, "not a whole number of rows of 256 bytes"),
        (np.zeros(65, np.float32).tobytes(), 422, "260 bytes is not a whole number"),
        (np.array([0.0] * 64 + [np.nan] + [0.0] * 63, np.float32).tobytes(), 422, "row 1 holds"),
        (np.zeros((51, 64), np.float32).tobytes(), 413, "51 rows"),
        (b"\0" * 20_480, 413, "at most 20000"),
    ],
)
def test_bad_raw_bodies_are_refused_and_the_service_goes_on(
    client: Served, body: bytes, status: int, words: str
) -> None:
    reply = client.post("/predict", content=body, headers=RAW)
    assert reply.status_code == status
    assert words in reply.json()["error"]
    ok = client.post("/predict", content=np.zeros(64, np.float32).tobytes(), headers=RAW)
    assert ok.status_code == 200


def test_outputs_that_are_not_finite_are_no_prediction(store: ModelStore, tmp_path: Path) -> None:
    """Weights that are finite but huge (a diverged run) overflow: a 500 with the reason,
    never NaN probabilities in a 200."""
    model = DIGITS_MLP.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e20)
    keys = generate_keys(tmp_path / "k2")
    diverged = ModelStore.open(tmp_path / "n2", pinned_key=keys.public, model="m", keep=3)
    rel = release(load_private_key(keys.private), tmp_path / "rel-d", 1, model=model)
    diverged.install(rel.envelope, rel.files)
    with pytest.raises(PredictionFailed, match="version 1 gave outputs that are not finite"):
        load_served(diverged).predict(np.ones((1, 64), np.float32))
    with serve_app(build_app(ServeSettings(store=diverged.root))) as c:
        reply = c.post("/predict", json={"inputs": [[1.0] * 64]})
    assert reply.status_code == 500
    assert "failed to predict" in reply.json()["error"]
    assert load_served(store).predict(np.ones((1, 64), np.float32)).labels  # a sane one does
