"""The model service's own logic: request validation, routes, swaps.

Real signed releases in a real store; the Starlette app served by uvicorn on 127.0.0.1 in a
thread of the test, driven by a real HTTP client (httpx). The service as its own process,
under load while releases are installed, is tests/integration/test_serving.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from releases_for_tests import install, release
from serving_fixtures import Served, serve_app

from federator import RequestRejected
from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.events import read_events
from federator.client.serving.holder import Change, Loader, ModelHolder
from federator.client.serving.http import ServeSettings, build_app
from federator.client.serving.inputs import Limits, parse_inputs, to_batch
from federator.client.serving.model import ServedModel, load_served
from federator.client.serving.rollout import RolloutPolicy, Stage
from federator.client.store import ModelStore

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    paths = generate_keys(tmp_path / "keys")
    return load_private_key(paths.private), paths.public


@pytest.fixture
def store(tmp_path: Path, key: tuple[Ed25519PrivateKey, Path]) -> ModelStore:
    return ModelStore.open(tmp_path / "node", pinned_key=key[1], model="m", keep=3)


@pytest.fixture
def client(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> Iterator[Served]:
    install(store, key[0], tmp_path, 1)
    limits = Limits(max_rows=50, max_body_bytes=20_000)
    app = build_app(ServeSettings(store=store.root, token=TOKEN, limits=limits))
    with serve_app(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _rows(n: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).random((n, 64)).round(4).tolist()


def test_predictions_are_the_installed_models(client: Served, store: ModelStore) -> None:
    rows = _rows(5)
    reply = client.post("/predict", json={"inputs": rows})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["version"] == 1
    model = store.load_model()  # the same version, loaded independently
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(rows, dtype=torch.float32)), 1)
    assert body["predictions"] == expected.argmax(1).tolist()
    np.testing.assert_allclose(body["probabilities"], expected.numpy(), rtol=1e-5, atol=1e-6)
    single = client.post("/predict", json={"inputs": rows[0]}).json()  # one row, unwrapped
    assert single["predictions"] == body["predictions"][:1]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not JSON"),
        (b'{"rows": []}', 400, '"inputs"'),
        (b'{"inputs": []}', 400, "non-empty"),
        (json.dumps({"inputs": [[1.0] * 63]}).encode(), 422, "do not fit"),
        (json.dumps({"inputs": [[1.0] * 64, [1.0] * 63]}).encode(), 422, "equal length"),
        (json.dumps({"inputs": [["a"] * 64]}).encode(), 422, "numbers only"),
        (b'{"inputs": [[' + b", ".join([b"1"] * 63 + [b"NaN"]) + b"]]}", 422, "NaN"),
        (json.dumps({"inputs": [[0] * 64] * 51}).encode(), 413, "at most 50"),
        (json.dumps({"inputs": _rows(40), "pad": "x" * 20_000}).encode(), 413, "bytes"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_service_goes_on(
    client: Served, body: bytes, status: int, words: str
) -> None:
    reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    assert words in reply.json()["error"]
    assert client.post("/predict", json={"inputs": _rows(1)}).status_code == 200


def test_a_token_is_required_except_for_health(client: Served) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        assert (
            client.post("/predict", json={"inputs": _rows(1)}, headers=headers).status_code == 401
        )
        assert client.get("/model", headers=headers).status_code == 401
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.get("/health", headers={"Authorization": ""}).json()["status"] == "ok"


def test_model_and_metrics(client: Served) -> None:
    info = client.get("/model").json()
    assert info["version"] == 1
    assert info["federation"] == "f"
    assert info["input_shape"] == [64]
    assert info["expired"] is False
    client.post("/predict", json={"inputs": _rows(3)})
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert 'federator_serve_requests_total{route="predict",status="200"} 1.0' in text
    assert 'federator_serve_requests_total{route="predict",status="400"} 1.0' in text
    assert "federator_serve_predicted_rows_total 3.0" in text
    assert "federator_serve_model_version 1.0" in text
    assert 'federator_serve_request_seconds_count{route="predict"} 2.0' in text


def test_no_model_installed_is_503_until_one_is(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    app = build_app(ServeSettings(store=store.root, poll_interval=0.05))
    with serve_app(app) as c:
        assert c.post("/predict", json={"inputs": _rows(1)}).status_code == 503
        assert c.get("/health").status_code == 503
        install(store, key[0], tmp_path, 1)
        app.state.holder.refresh()
        assert c.post("/predict", json={"inputs": _rows(1)}).json()["version"] == 1


def test_a_new_version_is_swapped_in_and_a_broken_one_is_not(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    install(store, key[0], tmp_path, 1)
    holder = ModelHolder(store)
    assert holder.refresh().change is Change.SWAPPED
    install(store, key[0], tmp_path, 2)
    assert holder.refresh().change is Change.SWAPPED
    assert holder.model is not None
    assert holder.model.version == 2
    # Version 3 is signed correctly but its weights do not fit the task's model.
    rel = release(key[0], tmp_path / "rel-3", 3, model=torch.nn.Linear(3, 2))
    store.install(rel.envelope, rel.files)
    outcome = holder.refresh()
    assert outcome.change is Change.FAILED
    assert "version 3 does not load" in outcome.reason
    assert holder.model.version == 2  # still the old one
    assert holder.refresh().change is Change.NONE  # not retried
    assert "version 3" in holder.problem
    # Version 2's files altered on disk: a restart would refuse them; the loader says why.
    store.rollback(to=2)
    (store.root / "versions" / "2" / "weights.safetensors").write_bytes(b"altered")
    fresh = ModelHolder(store)
    assert fresh.refresh().change is Change.FAILED
    assert fresh.model is None


def test_no_request_fails_while_versions_swap(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    install(store, key[0], tmp_path, 1)
    holder = ModelHolder(store)
    holder.refresh()
    batch = to_batch(_rows(4), input_shape=(64,), limits=Limits())
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                model = holder.model
                assert model is not None
                assert len(model.predict(batch).labels) == 4
                seen.add(model.version)
            except BaseException as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for v in (2, 3, 4):
        install(store, key[0], tmp_path, v)
        assert holder.refresh().change is Change.SWAPPED
    deadline = time.monotonic() + 10
    while 4 not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert 4 in seen


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    shape=st.sampled_from([(4,), (2, 3), (1, 2, 2)]),
    flat=st.booleans(),
    data=st.data(),
)
def test_rows_flat_or_shaped_give_the_same_batch(
    rows: int, shape: tuple[int, ...], flat: bool, data: st.DataObject
) -> None:
    values = data.draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            min_size=rows * int(np.prod(shape)),
            max_size=rows * int(np.prod(shape)),
        )
    )
    expected = np.asarray(values, dtype=np.float32).reshape((rows, *shape))
    sent = expected.reshape(rows, -1) if flat else expected
    body = json.dumps({"inputs": sent.tolist()}).encode()
    got = parse_inputs(body, input_shape=shape, limits=Limits())
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32


def test_infinity_is_refused_by_row() -> None:
    with pytest.raises(RequestRejected, match="row 1 holds NaN or an infinity") as err:
        to_batch([[0.0, 1.0], [1e39, 0.0]], input_shape=(2,), limits=Limits())
    assert err.value.status == 422


class _Broken(torch.nn.Module):
    """A model that loads but cannot predict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this version cannot predict")


def _breaking(version: int) -> Loader:
    def load(store: ModelStore, v: int) -> ServedModel:
        model = load_served(store, v)
        return replace(model, module=_Broken()) if v == version else model

    return load


def test_a_shadowed_version_is_promoted_over_http(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    install(store, key[0], tmp_path, 1)
    policy = RolloutPolicy(stages=(Stage.SHADOW,), shadow_requests=20)
    app = build_app(ServeSettings(store=store.root, rollout=policy))
    with serve_app(app) as c:
        install(store, key[0], tmp_path, 2)
        app.state.holder.refresh()
        assert c.get("/model").json()["stage"] == "shadow"
        answered = [c.post("/predict", json={"inputs": _rows(2, i)}).json() for i in range(40)]
        assert {a["version"] for a in answered[:20]} == {1}  # a shadow never answers
        assert answered[-1]["version"] == 2  # promoted after its 20 shadowed requests
        info = c.get("/model").json()
        assert (info["version"], info["candidate"], info["stage"]) == (2, None, "")
        metrics = c.get("/metrics").text
    events, _ = read_events(store.root)
    assert [e["kind"] for e in events] == ["started", "promoted"]
    assert 0 <= events[-1]["agreement"] <= 1
    assert 'federator_serve_rollout_events_total{kind="promoted"} 1.0' in metrics


def test_a_canary_that_cannot_predict_falls_back_without_a_failed_request(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    install(store, key[0], tmp_path, 1)
    policy = RolloutPolicy(stages=(Stage.CANARY,), canary_fraction=0.5)
    app = build_app(ServeSettings(store=store.root, rollout=policy), loader=_breaking(2))
    with serve_app(app) as c:
        install(store, key[0], tmp_path, 2)
        app.state.holder.refresh()
        replies = [c.post("/predict", json={"inputs": _rows(1, i)}) for i in range(30)]
        assert {r.status_code for r in replies} == {200}
        assert {r.json()["version"] for r in replies} == {1}
        assert c.get("/model").json()["candidate"] is None
    assert store.current_version() == 1  # rolled back in the store too
    events, _ = read_events(store.root)
    assert [e["kind"] for e in events] == ["started", "fell-back"]
    assert "cannot predict" in events[-1]["reason"]


def test_traffic_windows_carry_drift_scores(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """Digits like the training data drift little; the same digits brightened drift a lot."""
    from sklearn.datasets import load_digits

    from federator.client.serving.events import read_records, windows_path
    from federator.client.serving.monitor import write_reference
    from federator.simulations.datasets import ArrayData

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    path, _ = write_reference(
        ArrayData(x[:1000], y[:1000]), store.root, rng=np.random.default_rng(0)
    )
    install(store, key[0], tmp_path, 1)
    app = build_app(ServeSettings(store=store.root, reference=path, window_rows=200))
    with serve_app(app) as c:
        for rows in (x[1000:1200], np.clip(x[1200:1400] + 0.5, 0, 1.5)):
            for chunk in np.array_split(rows, 10):
                assert c.post("/predict", json={"inputs": chunk.tolist()}).status_code == 200
        deadline = time.monotonic() + 10  # windows close in a task after the last answer
        while len(read_records(windows_path(store.root))[0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        metrics = c.get("/metrics").text
    like, shifted = (w["drift"] for w in read_records(windows_path(store.root))[0])
    assert like["rows"] == shifted["rows"] == 200
    assert like["drifted_features"] < 0.1 < 0.5 < shifted["drifted_features"]
    assert shifted["psi_max"] > 1.0 > like["psi_max"]
    assert f"federator_serve_drift_features {shifted['drifted_features']}" in metrics


def test_the_node_reports_totals_and_new_events_once(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """What the ClientApp sends: running totals, the newest drift, events since the last
    reply — read by the coordinator's parser (the same declaration)."""
    from federator.client.serving.report import parse_report, serving_report

    assert serving_report(store.root) is None  # this node never served
    install(store, key[0], tmp_path, 1)
    app = build_app(
        ServeSettings(
            store=store.root, rollout=RolloutPolicy(stages=(Stage.CANARY,)), window_rows=4
        ),
        loader=_breaking(2),
    )
    with serve_app(app) as c:
        for i in range(4):
            c.post("/predict", json={"inputs": _rows(2, i)})
        install(store, key[0], tmp_path, 2)
        app.state.holder.refresh()
        for i in range(40):
            c.post("/predict", json={"inputs": _rows(1, i)})
    first = serving_report(store.root)
    assert first is not None
    report = parse_report(first)
    assert report.version == 1
    assert report.requests >= 4
    assert report.fallbacks == 1
    assert [e.kind for e in report.events] == ["started", "fell-back"]
    assert report.drift is None  # no reference: traffic only
    again = parse_report(serving_report(store.root))
    assert again.events == ()  # reported once
    assert (again.requests, again.fallbacks) == (report.requests, 1)  # totals stay


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"requests": -1}', "greater than or equal"),
        ('{"unknown": 1}', "Extra inputs"),
        ('{"drift": {"rows": 1}}', "ks_max"),
        ("x" * 40_000, "at most"),
        ("[1, 2", "JSON"),
    ],
)
def test_a_hostile_report_is_refused_with_a_reason(text: str, words: str) -> None:
    from federator.client.serving.report import parse_report

    with pytest.raises(ValueError, match=words):
        parse_report(text)


def test_a_store_switched_underneath_keeps_the_model_served(
    store: ModelStore, key: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    install(store, key[0], tmp_path, 1)
    holder = ModelHolder(store)
    holder.refresh()
    moved = tmp_path / "elsewhere"
    store.root.rename(moved)  # the folder is gone
    assert holder.refresh().change is Change.NONE
    assert holder.model is not None
    assert holder.model.version == 1
    assert "no current version any more" in holder.problem  # /health says degraded
    moved.rename(store.root)
    (store.root / "current").unlink()
    (store.root / "current").symlink_to("versions/not-a-version")  # a foreign link
    outcome = holder.refresh()
    assert outcome.change is Change.UNREADABLE
    assert "cannot be read" in holder.problem
    batch = to_batch(_rows(1), input_shape=(64,), limits=Limits())
    assert holder.route().answer.predict(batch).labels
