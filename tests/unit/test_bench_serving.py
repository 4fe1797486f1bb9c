"""The serving benchmark's own parts at tiny sizes (not timed: the numbers are its output)."""

from __future__ import annotations

from pathlib import Path

from federator.client.keys import generate_keys
from federator.client.store import ModelStore
from federator.simulations.bench.serving import _install, _quantiles, direct_latency


def test_quantiles_are_in_milliseconds() -> None:
    p50, p99 = _quantiles([0.001] * 99 + [0.5])
    assert p50 == 1.0
    assert p99 == 500.0


def test_a_signed_release_is_installed_and_measured(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    store = ModelStore.open(tmp_path / "store", pinned_key=keys.public, model="bench", keep=3)
    for version in (1, 2):
        _install(store, keys.private, "digits-mlp", version, tmp_path)
    assert store.current_version() == 2
    p50, p99 = direct_latency(store, seconds=0.05)
    assert 0 < p50 <= p99
