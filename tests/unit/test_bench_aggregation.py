"""The aggregation benchmark's core at tiny sizes (not timed): every case runs, and our
aggregate equals Flower's on the benchmark's own inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import without_gc_collect

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
    with without_gc_collect():  # the benchmark itself runs each case in a fresh process
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
