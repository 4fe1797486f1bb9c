"""Fresh releases: a release expires, and a store never forgets what it installed — an expired
release is refused, a lost or rewound ``state.json`` stops installs and node start until the
partner restores it, and nothing older is installed again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from federator import ReleaseRefused
from federator.client.keys import generate_keys, load_private_key
from federator.client.store import ModelStore, check_store_state
from federator.client.tasks import DIGITS_MLP
from federator.client.weights import model_arrays, save_safetensors
from federator.server.releases import ReleaseSigner, SignedRelease

SIGNED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    paths = generate_keys(tmp_path / "keys")
    return load_private_key(paths.private), paths.public


@pytest.fixture
def store(tmp_path: Path, keys: tuple[Ed25519PrivateKey, Path]) -> ModelStore:
    return ModelStore.open(tmp_path / "node", pinned_key=keys[1], model="m", keep=2)


def _release(
    key: Ed25519PrivateKey,
    folder: Path,
    version: int,
    *,
    days: float | None = 30,
    signed: datetime = SIGNED,
) -> SignedRelease:
    folder.mkdir(parents=True)
    torch.manual_seed(version)
    save_safetensors(model_arrays(DIGITS_MLP.build_model()), folder / "weights.safetensors")
    (folder / "lineage.json").write_text("{}")
    return ReleaseSigner(key).sign(
        model="m", version=version, previous_version=None, round=version, federation="f",
        run_id="r", task="digits-mlp", reasons=["ok"], metrics={}, folder=folder,
        valid_for=timedelta(days=days) if days else None, now=lambda: signed,
    )  # fmt: skip


def test_the_statement_carries_the_expiry_and_the_store_shows_it(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "v1", 1, days=7)
    predicate = json.loads(rel.statement)["predicate"]
    assert predicate["created_at"] == "2026-12-01T12:00:00+00:00"
    assert predicate["expires_at"] == "2026-12-08T12:00:00+00:00"
    assert store.install(rel.envelope, rel.files, now=SIGNED + timedelta(days=6)) == 1
    (kept,) = store.versions()
    assert kept.expires_at == "2026-12-08T12:00:00+00:00"
    assert not kept.expired(SIGNED + timedelta(days=6, hours=23))
    assert kept.expired(SIGNED + timedelta(days=7))


def test_an_expired_release_is_refused_and_the_old_model_stays(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    first = _release(keys[0], tmp_path / "v1", 1)
    store.install(first.envelope, first.files, now=SIGNED)
    late = _release(keys[0], tmp_path / "v2", 2, days=1)
    with pytest.raises(ReleaseRefused, match="version 2 expired at 2026-12-02T12:00:00"):
        store.install(late.envelope, late.files, now=SIGNED + timedelta(days=2))
    assert store.current_version() == 1
    assert store.install(late.envelope, late.files, now=SIGNED + timedelta(hours=1)) == 2


def test_a_release_without_expiry_never_expires(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "v1", 1, days=None)
    assert store.install(rel.envelope, rel.files, now=SIGNED + timedelta(days=10_000)) == 1
    assert store.versions()[0].expires_at is None


def test_a_lost_state_json_stops_installs_until_restored_and_replays_stay_refused(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    for v in (1, 2, 3):
        rel = _release(keys[0], tmp_path / f"v{v}", v)
        store.install(rel.envelope, rel.files, now=SIGNED)
    assert [v.version for v in store.versions()] == [3, 2]  # keeps 2
    (store.root / "state.json").unlink()
    assert store.high_water() == 3  # never less than what is kept
    replay = _release(keys[0], tmp_path / "old1", 1)
    with pytest.raises(
        ReleaseRefused, match="state.json is missing or unreadable, but versions up to 3"
    ):
        store.install(replay.envelope, replay.files, now=SIGNED)
    with pytest.raises(ReleaseRefused, match="--high-water N"):
        check_store_state(store.root)
    with pytest.raises(ReleaseRefused, match="below version 3 kept here"):
        store.repair_high_water(2)
    store.repair_high_water(3)
    check_store_state(store.root)
    with pytest.raises(ReleaseRefused, match="not newer than version 3"):
        store.install(replay.envelope, replay.files, now=SIGNED)


def test_a_rewound_state_json_is_caught_too(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    for v in (1, 2):
        rel = _release(keys[0], tmp_path / f"v{v}", v)
        store.install(rel.envelope, rel.files, now=SIGNED)
    (store.root / "state.json").write_text(json.dumps({"high_water": 1}))
    with pytest.raises(ReleaseRefused, match="state.json says 1, but versions up to 2"):
        check_store_state(store.root)


def test_node_start_refuses_a_store_that_lost_its_state(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    from federator.client.supernode import check_node

    rel = _release(keys[0], tmp_path / "v1", 1)
    store.install(rel.envelope, rel.files, now=SIGNED)
    state = tmp_path / "state"
    state.mkdir()
    store.root.rename(state / "models")
    (state / "models" / "state.json").unlink()
    with pytest.raises(ReleaseRefused, match="state.json is missing"):
        check_node(None, data=tmp_path / "nodata", policy=None, state=state)  # type: ignore[arg-type]


def test_node_models_shows_the_expiry_and_flags_an_expired_current(
    store: ModelStore,
    keys: tuple[Ed25519PrivateKey, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from federator.client import cli

    long_ago = datetime(2020, 1, 1, tzinfo=UTC)  # `node models` judges by the real clock
    rel = _release(keys[0], tmp_path / "v1", 1, days=1, signed=long_ago)
    store.install(rel.envelope, rel.files, now=long_ago)
    # Wide enough for one row: the console's width is fixed when the module is first
    # imported, and the store's path is long under pytest-xdist.
    monkeypatch.setattr(cli.out, "width", 400)
    shown = CliRunner().invoke(cli.node_app, ["models", "--store", str(store.root)])
    assert shown.exit_code == 0, shown.output
    assert "2020-01-02T00:00:00+00:00 (expired)" in shown.output
    assert "the current model's release has expired" in shown.output
