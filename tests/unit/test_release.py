"""Signed releases and the node's model store: every refusal leaves the installed model alone."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federator import ConfigError, ReleaseRefused, SignatureInvalid
from federator.client.keys import generate_keys, load_private_key, load_public_key
from federator.client.release import (
    Gate,
    Predicate,
    build_statement,
    check_files,
    open_release,
    sign_statement,
)
from federator.client.store import ModelStore
from federator.client.tasks import DIGITS_MLP
from federator.client.weights import model_arrays, save_safetensors
from federator.server.releases import ReleaseSigner, SignedRelease

MODEL = "digits"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    paths = generate_keys(tmp_path / "keys")
    return load_private_key(paths.private), paths.public


def _release(
    key: Ed25519PrivateKey, folder: Path, version: int, *, model: str = MODEL, seed: int = 0
) -> SignedRelease:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + version)
    save_safetensors(model_arrays(DIGITS_MLP.build_model()), folder / "weights.safetensors")
    (folder / "lineage.json").write_text(json.dumps({"round": version}))
    return ReleaseSigner(key).sign(
        model=model,
        version=version,
        previous_version=None,
        round=version,
        federation="fed",
        run_id="r1",
        task="digits-mlp",
        reasons=["ok"],
        metrics={"accuracy": 0.9},
        folder=folder,
    )


@pytest.fixture
def store(tmp_path: Path, keys: tuple[Ed25519PrivateKey, Path]) -> ModelStore:
    return ModelStore.open(tmp_path / "node", pinned_key=keys[1], model=MODEL, keep=2)


def _snapshot(store: ModelStore) -> tuple[int | None, dict[str, bytes]]:
    files = {
        str(p.relative_to(store.root)): p.read_bytes()
        for p in sorted(store.root.rglob("*"))
        if p.is_file()
    }
    return store.current_version(), files


# -- keys -----------------------------------------------------------------------------------


def test_generated_private_key_is_owner_only(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "k")
    assert stat.S_IMODE(paths.private.stat().st_mode) == 0o600
    assert load_public_key(paths.public)
    with pytest.raises(ConfigError, match="already holds a release key"):
        generate_keys(tmp_path / "k")


def test_passphrase_protected_key(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "k", passphrase=b"open sesame")
    assert load_private_key(paths.private, passphrase=b"open sesame")
    with pytest.raises(ConfigError, match="passphrase-protected"):
        load_private_key(paths.private)
    with pytest.raises(ConfigError, match="not a usable private key"):
        load_private_key(paths.private, passphrase=b"wrong")


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    paths = generate_keys(tmp_path / "k")
    os.chmod(paths.private, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(paths.private)


# -- verification ---------------------------------------------------------------------------


def test_a_good_release_installs_and_loads(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "r1", 1)
    assert store.install(rel.envelope, rel.files) == 1
    assert store.current_version() == 1
    model = store.load_model()
    x = torch.zeros(2, 64)
    reference = DIGITS_MLP.build_model()
    from federator.client.weights import load_safetensors

    reference.load_state_dict(
        load_safetensors(tmp_path / "r1" / "weights.safetensors").to_torch_state_dict()
    )
    assert torch.equal(model(x), reference.eval()(x))


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _tamper_payload(envelope: str, change: Callable[[dict[str, object]], None]) -> str:
    env = json.loads(envelope)
    statement = json.loads(base64.b64decode(env["payload"]))
    change(statement)
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(env)


def _refusals(
    key: Ed25519PrivateKey, tmp_path: Path
) -> dict[str, tuple[str, dict[str, bytes], str]]:
    """name → (envelope, files, expected reason) for every way a release must be refused."""
    good = _release(key, tmp_path / "v2", 2)
    other_key = Ed25519PrivateKey.generate()
    foreign = _release(other_key, tmp_path / "foreign", 2)
    old = _release(key, tmp_path / "v1b", 1)
    wrong_model = _release(key, tmp_path / "wm", 2, model="someone-else")
    weights = good.files["weights.safetensors"]
    unsigned = json.loads(good.envelope)
    unsigned["signatures"] = []

    def set_version(s: dict[str, object]) -> None:
        s["predicate"]["version"] = 99  # type: ignore[index]

    return {
        "tampered weights byte": (
            good.envelope,
            {**good.files, "weights.safetensors": _flip_byte(weights, len(weights) // 2)},
            "does not match its signed sha256",
        ),
        "tampered manifest": (
            _tamper_payload(good.envelope, set_version),
            good.files,
            "does not verify with the pinned key",
        ),
        "signature by another key": (
            foreign.envelope,
            foreign.files,
            "not signed by the pinned key",
        ),
        "unsigned release": (json.dumps(unsigned), good.files, "is not signed"),
        "replay of an older version": (old.envelope, old.files, "not newer than version 1"),
        "missing file": (
            good.envelope,
            {"weights.safetensors": weights},
            "missing ['lineage.json']",
        ),
        "extra file": (
            good.envelope,
            {**good.files, "run.sh": b"echo hi"},
            "does not list: ['run.sh']",
        ),
        "truncated file": (
            good.envelope,
            {**good.files, "weights.safetensors": weights[:-10]},
            "altered or truncated",
        ),
        "manifest naming a different model": (
            wrong_model.envelope,
            wrong_model.files,
            "is for model 'someone-else'",
        ),
    }


REFUSALS = [
    "tampered weights byte",
    "tampered manifest",
    "signature by another key",
    "unsigned release",
    "replay of an older version",
    "missing file",
    "extra file",
    "truncated file",
    "manifest naming a different model",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_leaves_the_installed_model_untouched(
    case: str, store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    first = _release(keys[0], tmp_path / "v1", 1)
    store.install(first.envelope, first.files)
    before = _snapshot(store)
    envelope, files, reason = _refusals(keys[0], tmp_path)[case]
    with pytest.raises(ReleaseRefused, match=".") as info:
        store.install(envelope, files)
    assert reason in str(info.value)
    assert _snapshot(store) == before


def test_integrity_failures_are_signature_errors(
    keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    cases = _refusals(keys[0], tmp_path)
    pinned = load_public_key(keys[1])
    for name in ("tampered weights byte", "missing file", "extra file", "truncated file"):
        envelope, files, _ = cases[name]
        with pytest.raises(SignatureInvalid):
            check_files(open_release(envelope, pinned), files)


predicates = st.builds(
    Predicate,
    model=st.text(min_size=1, max_size=20),
    version=st.integers(1, 10**6),
    previous_version=st.none() | st.integers(1, 10**6),
    round=st.integers(1, 10**4),
    federation=st.text(max_size=20),
    federation_run_id=st.text(alphabet="0123456789abcdef", max_size=32),
    task=st.text(max_size=20),
    created_at=st.just("2026-11-25T00:00:00+00:00"),
    gate=st.builds(
        Gate,
        decision=st.just("promoted"),
        reasons=st.lists(st.text(max_size=30), max_size=3),
        metrics=st.dictionaries(
            st.sampled_from(["accuracy", "loss"]), st.floats(0, 1, allow_nan=False)
        ),
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    predicate=predicates,
    weights=st.binary(min_size=1, max_size=64),
    position=st.integers(min_value=0),
)
def test_any_change_to_a_signed_statement_fails_verification(
    predicate: Predicate, weights: bytes, position: int
) -> None:
    key = Ed25519PrivateKey.generate()
    files = {"weights.safetensors": weights, "lineage.json": b"{}"}
    statement = build_statement(files, predicate)
    envelope = sign_statement(statement, key)
    assert open_release(envelope, key.public_key()).predicate == predicate
    env = json.loads(envelope)
    changed = _flip_byte(statement, position % len(statement))
    env["payload"] = base64.b64encode(changed).decode()
    with pytest.raises(SignatureInvalid):
        open_release(json.dumps(env), key.public_key())


# -- the store ------------------------------------------------------------------------------


def test_store_keeps_k_versions_and_rolls_back(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    for v in (1, 2, 3):
        rel = _release(keys[0], tmp_path / f"v{v}", v)
        store.install(rel.envelope, rel.files)
    assert [v.version for v in store.versions()] == [3, 2]  # keep=2
    assert store.rollback() == 2
    assert store.current_version() == 2
    with pytest.raises(ReleaseRefused, match="no version older than 2"):
        store.rollback()
    again = _release(keys[0], tmp_path / "v3b", 3)
    with pytest.raises(ReleaseRefused, match="replay"):
        store.install(again.envelope, again.files)  # a rollback is not undone by a re-send
    assert store.rollback(to=3) == 3
    with pytest.raises(ReleaseRefused, match="version 1 is not in the store"):
        store.rollback(to=1)
    newer = _release(keys[0], tmp_path / "v4", 4)
    assert store.install(newer.envelope, newer.files) == 4


def test_store_settings_survive_for_the_cli(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "v1", 1)
    store.install(rel.envelope, rel.files)
    again = ModelStore.reopen(store.root)
    assert again.model == MODEL
    assert again.current_version() == 1
    with pytest.raises(ReleaseRefused, match="not a Federator model store"):
        ModelStore.reopen(tmp_path)


def test_interrupted_install_keeps_the_old_model(
    store: ModelStore,
    keys: tuple[Ed25519PrivateKey, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _release(keys[0], tmp_path / "v1", 1)
    store.install(first.envelope, first.files)
    before = _snapshot(store)
    second = _release(keys[0], tmp_path / "v2", 2)

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="power cut"):
        store.install(second.envelope, second.files)
    assert _snapshot(store) == before
    assert not list(store.root.glob(".incoming-*"))


def test_disk_tampering_is_caught_on_load(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "v1", 1)
    store.install(rel.envelope, rel.files)
    weights = store.root / "versions" / "1" / "weights.safetensors"
    weights.write_bytes(_flip_byte(weights.read_bytes(), 100))
    with pytest.raises(SignatureInvalid):
        store.load_model()


def test_weights_arrays_match_after_install(
    store: ModelStore, keys: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    rel = _release(keys[0], tmp_path / "v1", 1)
    store.install(rel.envelope, rel.files)
    installed = (store.root / "current" / "weights.safetensors").read_bytes()
    assert installed == rel.files["weights.safetensors"]
