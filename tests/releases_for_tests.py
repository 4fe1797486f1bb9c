"""Signed releases of the digits MLP for tests of a node's store and its model service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federator.client.store import ModelStore
from federator.client.tasks import DIGITS_MLP
from federator.client.weights import model_arrays, save_safetensors
from federator.server.releases import ReleaseSigner, SignedRelease


def release(
    key: Ed25519PrivateKey, folder: Path, version: int, *, model: torch.nn.Module | None = None
) -> SignedRelease:
    """Version ``version`` of model "m" (``model``'s weights; default a fresh digits MLP
    seeded by the version), signed with ``key``, valid for 30 days."""
    folder.mkdir(parents=True)
    torch.manual_seed(version)
    save_safetensors(
        model_arrays(model or DIGITS_MLP.build_model()), folder / "weights.safetensors"
    )
    (folder / "lineage.json").write_text("{}")
    return ReleaseSigner(key).sign(
        model="m", version=version, previous_version=None, round=version, federation="f",
        run_id="r", task="digits-mlp", reasons=["ok"], metrics={}, folder=folder,
        valid_for=timedelta(days=30), now=lambda: datetime.now(UTC),
    )  # fmt: skip


def install(store: ModelStore, key: Ed25519PrivateKey, tmp_path: Path, version: int) -> None:
    """Sign version ``version`` and install it into ``store``, as a node does."""
    rel = release(key, tmp_path / f"rel-{version}", version)
    assert store.install(rel.envelope, rel.files) == version
