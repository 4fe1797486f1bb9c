"""The warm ClientApp executor: Flower's own ``flwr-clientapp`` arguments, one process per
message, the next one started ahead of time."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus, SubprocessExecutor

from federator.client import _warm_exec
from federator.client._warm_exec import WarmExecutor, clientapp_args


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


def test_a_task_goes_to_the_warm_process_and_the_next_one_starts() -> None:
    spawned: list[FakeProc] = []

    def spawn() -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    ex = WarmExecutor(spawn=spawn)  # type: ignore[arg-type]
    ex.warm_up()
    assert len(spawned) == 1
    result = ex.launch(_spec())
    assert result.status is LaunchResultStatus.ACCEPTED
    assert len(spawned) == 2  # the next warm process, started right away
    line = spawned[0].written
    assert line.endswith(b"\n")
    assert json.loads(line) == clientapp_args(_spec())
    assert spawned[0].stdin.closed  # one message per process
    assert not spawned[1].stdin.closed

    ex.launch(_spec(token="tok-456"))
    assert json.loads(spawned[1].written)[3] == "tok-456"
    assert len(spawned) == 3


def test_a_dead_warm_process_is_replaced_before_use() -> None:
    spawned: list[FakeProc] = []

    def spawn() -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    ex = WarmExecutor(spawn=spawn)  # type: ignore[arg-type]
    ex.warm_up()
    spawned[0].returncode = 1  # crashed while importing
    ex.launch(_spec())
    assert spawned[0].written == b""
    assert json.loads(spawned[1].written) == clientapp_args(_spec())


def test_finished_processes_are_reaped_and_close_releases_the_idle_one() -> None:
    spawned: list[FakeProc] = []

    def spawn() -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    ex = WarmExecutor(spawn=spawn)  # type: ignore[arg-type]
    ex.launch(_spec())
    ex.launch(_spec())
    assert len(ex._running) == 2
    spawned[0].returncode = 0
    ex.reconcile()
    assert ex._running == [spawned[1]]
    ex.close()
    assert spawned[2].stdin.closed


def test_other_task_types_start_the_ordinary_way(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **_: seen.append(list(args)))
    ex = WarmExecutor(spawn=lambda: pytest.fail("no warm process for a ServerApp"))
    ex.launch(_spec(TaskType.SERVER_APP))
    assert seen[0][0] == "flwr-serverapp"


def _clientapp_module() -> object:
    # ``flwr.supernode.cli`` re-exports a function under the module's own name.
    return importlib.import_module("flwr.supernode.cli.flwr_clientapp")


def test_a_warm_process_without_a_task_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    called: list[bool] = []
    monkeypatch.setattr(_clientapp_module(), "flwr_clientapp", lambda: called.append(True))
    _warm_exec.main(["--warm-child"])
    assert called == []


def test_a_warm_process_runs_flowers_clientapp_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = clientapp_args(_spec())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(args).encode())))
    monkeypatch.setattr(sys, "argv", ["x"])
    seen: list[list[str]] = []
    monkeypatch.setattr(_clientapp_module(), "flwr_clientapp", lambda: seen.append(list(sys.argv)))
    _warm_exec.main(["--warm-child"])
    assert seen == [["flwr-clientapp", *args]]
    assert "federator.client.app" in sys.modules


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
    ex._ready = spawned[0]  # type: ignore[assignment]
    result = ex.launch(_spec())
    assert result.status is LaunchResultStatus.ACCEPTED
    assert seen == [["flwr-clientapp", *clientapp_args(_spec())]]
    assert ex._ready is spawned[1]


def test_a_real_warm_process_starts_and_leaves_when_not_needed() -> None:
    proc = _warm_exec.spawn_warm()
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0
