"""Shared pieces of the round-latency benchmark: timing from streamed log lines, free ports,
processes stopped by PID (process groups), Flower's environment for each deployment."""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from federator import DeploymentError
from federator.client.processes import ManagedProcess, flower_env, wait_for_log

STARTED = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class Timing:
    """Per-round wall times of one deployment, from the streamed log lines."""

    name: str
    rounds: tuple[float, ...]  # round 1 first; round 1 counts from "run started"
    startup: float  # processes started until they all answered

    @property
    def first(self) -> float:
        return self.rounds[0]

    @property
    def steady(self) -> float:
        """Median of rounds 2..N."""
        return statistics.median(self.rounds[1:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env(home: Path, *, bare: bool = False) -> dict[str, str]:
    """Flower's environment as Federator sets it; ``bare``: Flower's defaults (no tuning)."""
    env = flower_env(home)
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200")
    if bare:
        env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
    return env


@contextmanager
def processes() -> Iterator[list[ManagedProcess]]:
    """Processes started inside are stopped by PID (whole process group), last first."""
    started: list[ManagedProcess] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            if proc.alive():
                proc.stop(grace=40)


def need(proc: ManagedProcess, marker: str, *, timeout: float) -> None:
    if not wait_for_log(proc, marker, timeout=timeout):
        raise DeploymentError(f"{proc.name}: {marker!r} not seen in {proc.log}:\n{proc.tail()}")


def stream(
    argv: list[str], *, env: dict[str, str], log: Path, clock: Callable[[], float]
) -> list[tuple[float, str]]:
    """Run ``argv`` to the end; every output line with the time it arrived."""
    lines: list[tuple[float, str]] = []
    with (
        log.open("w", buffering=1) as out,
        subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((clock(), line))
            out.write(line)
        code = proc.wait(timeout=60)
    if code != 0:
        raise DeploymentError(f"{argv[0]} exited with {code}; see {log}")
    return lines


def marks(lines: list[tuple[float, str]], pattern: re.Pattern[str]) -> list[float]:
    return [t for t, line in lines if pattern.search(line)]


def round_times(start: float, ends: list[float]) -> tuple[float, ...]:
    """Round k lasts from the end of round k-1 (round 1: from ``start``) to its end."""
    return tuple(b - a for a, b in zip([start, *ends], ends, strict=False))
