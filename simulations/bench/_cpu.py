"""CPU time per role on this machine, read from ``/proc`` at every round stamp.

Wall time says how long a round took; CPU time says who used the two cores meanwhile — the
round loop's process (ServerApp, MLflow writer, server-side evaluation), the model-export
child, the Simulation Engine's ClientApp actors, and the rest (Ray's own daemons, the
kernel). A hook whose work is "off the critical path" still costs the clients CPU if it
runs while they train; this is where that shows.
"""

from __future__ import annotations

import os
from pathlib import Path

ROLES = ("round loop process", "model-export child", "ClientApp actors", "rest of the machine")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _role(pid: int, comm: str, me: int) -> str:
    if pid == me:
        return ROLES[0]
    if comm.startswith("ray::ClientApp"):
        return ROLES[2]
    if comm.startswith("python"):
        try:
            if b"_export_child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return ROLES[1]
        except OSError:
            pass
    return ROLES[3]


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's live processes."""
    me = os.getpid()
    out = dict.fromkeys(ROLES, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        out[_role(int(stat.parent.name), comm, me)] += cpu
    return out


class CpuStamps(list[float]):
    """Round stamps (``time.monotonic()``) that also record `cpu_by_role` at each one."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[dict[str, float]] = []

    def append(self, stamp: float) -> None:
        self.cpu.append(cpu_by_role())
        super().append(stamp)


def per_round(cpu: list[dict[str, float]], *, skip: int = 1) -> dict[str, float]:
    """Mean CPU seconds per round of each role, after the first ``skip`` rounds.

    ``cpu[0]`` is taken at the federation's start, ``cpu[k]`` when round k ended. A process
    that ended between two stamps drops out of the later one; clamped at zero."""
    start, end = cpu[skip], cpu[-1]
    rounds = len(cpu) - 1 - skip
    return {r: max(0.0, end[r] - start[r]) / rounds for r in ROLES} if rounds > 0 else {}


__all__ = ["ROLES", "CpuStamps", "cpu_by_role", "per_round"]
