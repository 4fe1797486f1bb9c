"""A node's SuperExec that keeps the next ClientApp process warm.

Flower 1.42's ``flower-superexec`` starts a fresh ``flwr-clientapp`` process for every message
a node receives, and that process imports torch, Flower and Federator (about 5 s on two busy
cores) before it even pulls its message — twice per round (train, evaluate). Run the SuperNode
with ``--isolation process`` and this executor beside it instead: it asks the SuperNode's
Runtime API for tasks like ``flower-superexec`` does (``AcquireTask``), but hands each
ClientApp task to a process started *ahead of time* that has already imported everything, and
starts the next one straight away, so it is ready before the next message arrives.

Isolation is unchanged: every process still serves exactly one message, with Flower's own
``flwr-clientapp`` code (its command-line arguments, token, FAB install, heartbeat, error
replies), and exits; nothing is carried from one message to the next. Only the imports move
ahead of time. Task types other than ClientApps are started the ordinary way.

    python -m federator.client._warm_exec --runtime-api-address 127.0.0.1:9094 \\
        --parent-pid PID [--poll 0.1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor

PRELOAD = ("federator.client.app",)  # what a warm process imports while it waits
_MODULE = "federator.client._warm_exec"  # not ``__name__``: that is ``__main__`` under -m
_CHILD_FLAG = "--warm-child"


@dataclass
class WarmExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks go to a pre-started warm process.

    ``spawn`` starts a warm process (stdin a pipe); injected so tests need no Python child.
    """

    spawn: Callable[[], subprocess.Popen[bytes]]
    _ready: subprocess.Popen[bytes] | None = None
    _running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def warm_up(self) -> None:
        """Start the first warm process (done before the first task arrives)."""
        if self._ready is None or self._ready.poll() is not None:
            self._ready = self.spawn()

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return SubprocessExecutor().launch(spec)
        self.warm_up()
        proc = self._ready
        assert proc is not None
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(clientapp_args(spec)).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:  # it died while warming up: Flower's own cold start
            self._ready = self.spawn()
            return SubprocessExecutor().launch(spec)
        self._running.append(proc)
        self._ready = self.spawn()
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap ClientApp processes that have finished."""
        self._running = [p for p in self._running if p.poll() is None]

    def close(self) -> None:
        """Let the idle warm process go (end of input makes it exit)."""
        if self._ready is not None and self._ready.stdin is not None:
            self._ready.stdin.close()
        self._ready = None


def clientapp_args(spec: ExecutionSpec) -> list[str]:
    """The ``flwr-clientapp`` arguments Flower's own SubprocessExecutor would pass."""
    args = ["--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def spawn_warm(python: str = sys.executable) -> subprocess.Popen[bytes]:
    """A process that imports `PRELOAD`, then waits for its ``flwr-clientapp`` arguments."""
    return subprocess.Popen([python, "-m", _MODULE, _CHILD_FLAG], stdin=subprocess.PIPE)


def _child() -> None:
    import importlib

    from flwr.supercore import log
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as err:  # the ClientApp load below reports it to the coordinator
            log(ERROR, "warm ClientApp process: cannot preload %s: %s", module, err)
    line = sys.stdin.buffer.readline()
    if not line:  # the executor stopped before giving this process a task
        return
    sys.argv = ["flwr-clientapp", *json.loads(line)]
    flwr_clientapp()


def serve(
    runtime_api_address: str,
    *,
    executor: WarmExecutor,
    poll: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Flower's SuperExec loop (``run_superexec``) with `WarmExecutor`; runs until killed."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore import log
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    executor.warm_up()
    log(INFO, "warm SuperExec: serving the Runtime API at %s", runtime_api_address)
    try:
        while True:
            executor.reconcile()
            types, hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
            res = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=hashes)
            )
            if res.HasField("task") and res.token:
                plugin.launch_task(token=res.token, task=res.task)
            sleep(poll)
    finally:
        client.close()
        executor.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == [_CHILD_FLAG]:
        _child()
        return
    parser = argparse.ArgumentParser(description="SuperExec with a warm ClientApp process.")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--poll", type=float, default=0.1)
    ns = parser.parse_args(args)
    if ns.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(ns.parent_pid)
    serve(ns.runtime_api_address, executor=WarmExecutor(spawn=spawn_warm), poll=ns.poll)


if __name__ == "__main__":
    main()
