"""The ClientApp executor: Flower's own ``flwr-clientapp`` arguments, one fork server that
imports once, one fresh forked process per message."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus, SubprocessExecutor

from federator.client._flwr_compat import warm_exec as _warm_exec
from federator.client._flwr_compat.warm_exec import WarmExecutor, clientapp_args


class FakeProc:
    """Stands for a warm process: a stdin to write to, running until told otherwise."""

    def __init__(self) -> None:
        self.stdin = io.BytesIO()
        self.written = b""
        self.returncode: int | None = None
        real_close = self.stdin.close

        def close() -> None:
            self.written = self.stdin.getvalue()
            real_close()

        self.stdin.close = close  # type: ignore[method-assign]

    def poll(self) -> int | None:
        return self.returncode


def _spec(task_type: TaskType = TaskType.CLIENT_APP, **changes: Any) -> ExecutionSpec:
    values: dict[str, Any] = {
        "task_type": task_type,
        "runtime_api_address": "127.0.0.1:9094",
        "token": "tok-123",
        "insecure": True,
        "root_certificates_path": None,
        "runtime_dependency_install": False,
        "parent_pid": 4242,
        "suppress_output": False,
        "task_id": 7,
    }
    values.update(changes)
    return ExecutionSpec(**values)


def _flower_argv(spec: ExecutionSpec, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What Flower's own SubprocessExecutor would run, captured instead of started."""
    seen: list[list[str]] = []

    def fake_popen(args: list[str], **_: object) -> None:
        seen.append(list(args))

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    SubprocessExecutor().launch(spec)
    monkeypatch.undo()
    return seen[0]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"insecure": False, "root_certificates_path": "/k/ca.crt"},
        {"parent_pid": None, "runtime_dependency_install": True},
    ],
)
def test_arguments_are_the_ones_flower_would_pass(
    changes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(**changes)
    flower = _flower_argv(spec, monkeypatch)
    assert flower[0] == "flwr-clientapp"
    assert clientapp_args(spec) == flower[1:]


class ServerProc(FakeProc):
    """Stands for the fork server: lines written to it stay readable until it is closed."""

    def lines(self) -> list[list[str]]:
        data = self.written if self.stdin.closed else self.stdin.getvalue()
        return [json.loads(line) for line in data.splitlines()]


def _executor(spawned: list[ServerProc]) -> WarmExecutor:
    def spawn() -> ServerProc:
        spawned.append(ServerProc())
        return spawned[-1]

    return WarmExecutor(spawn=spawn)  # type: ignore[arg-type]


def test_every_task_goes_to_the_one_fork_server() -> None:
    spawned: list[ServerProc] = []
    ex = _executor(spawned)
    ex.warm_up()
    assert len(spawned) == 1
    assert ex.launch(_spec()).status is LaunchResultStatus.ACCEPTED
    ex.launch(_spec(token="tok-456"))
    ex.reconcile()
    assert len(spawned) == 1  # no process per message any more
    assert spawned[0].lines() == [clientapp_args(_spec()), clientapp_args(_spec(token="tok-456"))]
    ex.close()
    assert spawned[0].stdin.closed  # end of input: the server exits


def test_a_dead_fork_server_is_replaced_before_use() -> None:
    spawned: list[ServerProc] = []
    ex = _executor(spawned)
    ex.warm_up()
    spawned[0].returncode = 1  # crashed while importing
    ex.reconcile()
    assert len(spawned) == 2
    ex.launch(_spec())
    assert spawned[0].stdin.getvalue() == b""
    assert spawned[1].lines() == [clientapp_args(_spec())]


def test_other_task_types_start_the_ordinary_way(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **_: seen.append(list(args)))
    ex = WarmExecutor(spawn=lambda: pytest.fail("no warm process for a ServerApp"))
    ex.launch(_spec(TaskType.SERVER_APP))
    assert seen[0][0] == "flwr-serverapp"


_SERVER = """
import json, os, sys
from federator.client._flwr_compat.warm_exec import fork_server

out = sys.argv[1]

def run_task(args):
    if args == ["boom"]:
        raise RuntimeError("task failed")
    with open(os.path.join(out, args[0]), "w") as f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "args": args}, f)
    sys.exit(3)  # like Flower's clientapp, which ends with sys.exit

fork_server(sys.stdin.buffer, run_task=run_task)
print("server done", flush=True)
"""


def test_the_fork_server_runs_each_task_in_its_own_child(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tasks = [["a", "--token", "1"], ["boom"], ["b", "--token", "2"], ["c"]]
    out, err = proc.communicate(b"".join(json.dumps(t).encode() + b"\n" for t in tasks), 120)
    assert proc.returncode == 0
    assert out.endswith(b"server done\n")  # a child never returns into the server's loop
    assert out.count(b"server done") == 1
    assert b"RuntimeError: task failed" in err  # a failing task is reported, the rest go on
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    ran = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert sorted(ran) == ["a", "b", "c"]
    assert ran["b"]["args"] == ["b", "--token", "2"]
    pids = {r["pid"] for r in ran.values()}
    assert len(pids) == 3
    assert proc.pid not in pids
    assert {r["ppid"] for r in ran.values()} <= {proc.pid, 1}  # forked by the server


def test_the_real_fork_server_preloads_and_leaves_at_end_of_input() -> None:
    proc = _warm_exec.spawn_warm()
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0


def test_a_warm_process_that_died_falls_back_to_flowers_cold_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Dead(FakeProc):
        def __init__(self) -> None:
            super().__init__()

            def broken(data: bytes) -> int:
                raise BrokenPipeError

            self.stdin.write = broken  # type: ignore[method-assign]

    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **_: seen.append(list(args)))
    spawned: list[FakeProc] = [Dead()]

    def spawn() -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    ex = WarmExecutor(spawn=spawn)  # type: ignore[arg-type]
    ex._server = spawned[0]  # type: ignore[assignment]
    result = ex.launch(_spec())
    assert result.status is LaunchResultStatus.ACCEPTED
    assert seen == [["flwr-clientapp", *clientapp_args(_spec())]]
    assert ex._server is spawned[1]
