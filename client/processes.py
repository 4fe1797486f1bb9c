"""Starting and stopping Flower's own processes (SuperLink, SuperNode) for deployment.

Each process starts in its own session, so that stopping it reaches the children Flower
forks (SuperExec, ServerApp/ClientApp processes): `ManagedProcess.stop` signals the whole
process group it created — by its id, never by a program name — and escalates to SIGKILL after
a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from federator import DeploymentError

BIN = Path(sys.executable).parent


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment Flower's commands run in: Federator's own interpreter first on PATH,
    no telemetry or update checks, never a runtime dependency install, a 0.2 s SuperExec
    poll."""
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    # Flower's SuperExec (the coordinator's: it starts the ServerApp of a submitted run)
    # looks for work every second by default.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flower_command(name: str) -> str:
    """The path of one of Flower's commands installed next to this interpreter."""
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class ManagedProcess:
    """A started process, its log file, and how to stop it with everything it forked."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0  # where this process's output begins in ``log`` (appended to)
    argv: tuple[str, ...] = ()  # what was started, for `relaunch`

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """What this process has written to its log so far (not earlier processes' output
        in the same file); empty if the log cannot be read."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        """The end of the process's output, for error messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    def relaunch(self, *, env: dict[str, str]) -> ManagedProcess:
        """Start the same command again (after this one exited), appending to the same log."""
        return launch(self.name, list(self.argv), log=self.log, env=env)

    def stop(self, *, grace: float = 20.0) -> int | None:
        """SIGTERM the process group, wait up to ``grace`` s, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.popen.pid):
                self.popen.poll()
                time.sleep(0.2)
            if not _group_alive(self.popen.pid):
                break
        return self.popen.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def launch(name: str, argv: list[str], *, log: Path, env: dict[str, str]) -> ManagedProcess:
    """Start ``argv`` in a new session, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        start = out.seek(0, os.SEEK_END)
        popen = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return ManagedProcess(name=name, popen=popen, log=log, log_start=start, argv=tuple(argv))


def node_config_string(values: dict[str, str | int | float]) -> str:
    """Flower's ``--node-config`` syntax (``key='text' n=3``); refuses quotes in values."""
    parts = []
    for key, value in values.items():
        if isinstance(value, str):
            if "'" in value or '"' in value:
                raise ValueError(f"node config value for '{key}' must not contain quotes")
            parts.append(f"{key}='{value}'")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def wait_for_log(
    proc: ManagedProcess,
    marker: str,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until ``marker`` appears in the process's output (True), or it exits (False), or
    ``timeout`` passes (False). A marker left in the log by an earlier process (a restarted
    node appends to the same log) does not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in proc.output():
            return True
        if not proc.alive():
            return marker in proc.output()
        sleep(0.5)
    return False


def supervise(procs: list[ManagedProcess], *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until Ctrl-C or SIGTERM (then stop every process, last started first) or until
    one of them exits on its own (then stop the rest and raise `DeploymentError`)."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        while True:
            for proc in procs:
                if not proc.alive():
                    raise DeploymentError(
                        f"the {proc.name} (pid {proc.pid}) exited with code "
                        f"{proc.popen.returncode}:\n{proc.tail()}"
                    )
            sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.alive():
                proc.stop()
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "BIN",
    "ManagedProcess",
    "flower_command",
    "flower_env",
    "launch",
    "node_config_string",
    "supervise",
    "wait_for_log",
]
