"""The aggregation benchmark's core at tiny sizes (not timed): every case runs, and our
aggregate equals Flower's on the benchmark's own inputs."""

from __future__ import annotations

import gc
from pathlib import Path
from unittest import mock

import pytest

from federator.simulations.bench.aggregation import Case, in_subprocess, max_delta, measure

N, P = 24, 3000  # Krum's f = 10 needs more than 2f + 2 = 22 replies


@pytest.mark.parametrize(
    ("method", "flower"),
    [
        ("fedavg", "flower"),
        ("krum", "flower"),
        ("krum", "flower-legacy"),
        ("krum", "flower-1blas"),
        ("multikrum", "flower"),
        ("median", "flower"),
        ("trimmed", "flower"),
        ("bulyan", "flower"),
    ],
)
def test_each_case_runs_and_agrees_with_flower(method: str, flower: str, tmp_path: Path) -> None:
    ours_out, flower_out = str(tmp_path / "ours.npy"), str(tmp_path / "flower.npy")
    ours = measure(Case(method, "ours", N, P, repeats=2, out=ours_out))
    # Flower's Bulyan runs `gc.collect()` after each array it reads, which in this test process
    # (torch, MLflow, every other test's objects loaded) costs ~70 ms apiece; the benchmark
    # measures it in a fresh process. It changes no value.
    with mock.patch.object(gc, "collect", return_value=0):
        theirs = measure(Case(method, flower, N, P, repeats=2, out=flower_out))
    for result in (ours, theirs):
        assert result["seconds"] > 0
        assert result["extra_bytes"] >= 0
    assert max_delta(ours_out, flower_out) < 1e-6


def test_a_case_runs_in_a_fresh_process(tmp_path: Path) -> None:
    result = in_subprocess(Case("fedavg", "ours", 3, 5000, out=str(tmp_path / "a.npy")))
    assert result["seconds"] > 0
    # Output (one model) and its copy into bytes: at least one model, far below n models.
    assert 5000 * 4 <= result["extra_bytes"] < 3 * 5000 * 4 + 2**22
