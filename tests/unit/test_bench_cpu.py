"""The benchmarks' CPU-per-role figures: read from /proc, attributed by role, per round."""

from __future__ import annotations

import time

import pytest

from federator.simulations.bench._cpu import ROLES, CpuStamps, cpu_by_role, per_round


def test_this_process_is_the_round_loop_and_its_work_shows() -> None:
    before = cpu_by_role()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU here
        pass
    after = cpu_by_role()
    assert set(before) == set(ROLES)
    assert after[ROLES[0]] - before[ROLES[0]] >= 0.2


def test_per_round_skips_the_first_rounds_and_divides_by_the_rest() -> None:
    stamps = CpuStamps()
    for _ in range(4):
        stamps.append(time.monotonic())
    assert len(stamps.cpu) == len(stamps) == 4
    cpu = [dict.fromkeys(ROLES, float(k * k)) for k in range(5)]  # 0, 1, 4, 9, 16
    assert per_round(cpu, skip=1)[ROLES[1]] == pytest.approx((16 - 1) / 3)
    assert per_round(cpu, skip=3)[ROLES[2]] == pytest.approx(16 - 9)
    assert per_round(cpu[:2], skip=1) == {}
