"""A node's SuperExec that starts each ClientApp process from a pre-imported parent.

Flower 1.42's ``flower-superexec`` starts a fresh ``flwr-clientapp`` process for every message
a node receives, and that process imports torch, Flower and Federator (2–5 s of CPU) before it
even pulls its message — twice per round (train, evaluate). On a small machine that import
work, not training, is what a round is made of.

Run the SuperNode with ``--isolation process`` and this executor beside it instead. It asks
the SuperNode's Runtime API for tasks like ``flower-superexec`` does (``AcquireTask``), but
hands each ClientApp task to a *fork server*: one long-lived process that imports everything
once and never runs a task itself. For every task it forks a child (milliseconds), and that
child runs Flower's own ``flwr-clientapp`` code (its command-line arguments, token, FAB
install, heartbeat, error replies) for exactly one message and exits.

Isolation is unchanged: every message is served by a fresh process, and nothing is carried
from one message to the next, because the parent only imports modules — it holds no data, no
model, no connection, no thread, and has drawn no random numbers (every child starts from the
RNG state of a freshly started interpreter; Python's ``random`` is reseeded at fork, as in a
new process). Task types other than ClientApps are started the ordinary way.

    python -m federator.client._flwr_compat.warm_exec --runtime-api-address 127.0.0.1:9094 \\
        --parent-pid PID [--poll 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO
from typing import IO

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor

# What the fork server imports once: the ClientApp, and what its first round would import
# lazily — torch's compiler package (pulled in by the first optimizer: 1.5 s) and Opacus
# (local DP: 1 s). Nothing is run, only imported.
PRELOAD = ("federator.client.app", "torch._dynamo", "opacus")
_MODULE = (
    "federator.client._flwr_compat.warm_exec"  # not ``__name__``: that is ``__main__`` under -m
)
_CHILD_FLAG = "--warm-child"


@dataclass
class WarmExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks go to the fork server.

    ``spawn`` starts the fork server (stdin a pipe); injected so tests need no Python child.
    """

    spawn: Callable[[], subprocess.Popen[bytes]]
    _server: subprocess.Popen[bytes] | None = None

    def warm_up(self) -> None:
        """Start the fork server if it is not running (done before the first task arrives)."""
        if self._server is None or self._server.poll() is not None:
            self._server = self.spawn()

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
        server = self._server
        assert server is not None
        assert server.stdin is not None
        try:
            server.stdin.write(json.dumps(clientapp_args(spec)).encode() + b"\n")
            server.stdin.flush()
        except BrokenPipeError:  # it died since the last check: Flower's own cold start
            self._server = self.spawn()
            return SubprocessExecutor().launch(spec)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Restart the fork server if it has died (its children are reaped by the kernel)."""
        self.warm_up()

    def close(self) -> None:
        """End of input makes the fork server exit; running children finish on their own."""
        if self._server is not None and self._server.stdin is not None:
            self._server.stdin.close()
        self._server = None


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
    """The fork server: imports `PRELOAD`, then forks a ClientApp per line of arguments."""
    return subprocess.Popen([python, "-m", _MODULE, _CHILD_FLAG], stdin=subprocess.PIPE)


def fork_server(lines: IO[bytes], *, run_task: Callable[[list[str]], None]) -> None:
    """For every JSON line of arguments, fork a child that runs ``run_task`` and exits.

    Returns at end of input. Children are reaped by the kernel (SIGCHLD ignored), so a
    finished ClientApp leaves no zombie behind however long the node runs.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while line := lines.readline():
        args = json.loads(line)
        if os.fork() == 0:
            _child_main(run_task, args)


def _child_main(run_task: Callable[[list[str]], None], args: list[str]) -> None:
    """A forked child's whole life: it must never return into the fork server's loop."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the ClientApp may wait for its own
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the task list is the server's, not the child's
        run_task(args)
    except SystemExit as done:  # Flower's clientapp ends with sys.exit(code)
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # noqa: BLE001 — reported, then the child exits with failure
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _child() -> None:
    import importlib

    from flwr.supercore import log
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    def run_clientapp(args: list[str]) -> None:
        sys.argv = ["flwr-clientapp", *args]
        flwr_clientapp()

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as err:  # the ClientApp load below reports it to the coordinator
            log(ERROR, "ClientApp fork server: cannot preload %s: %s", module, err)
    fork_server(sys.stdin.buffer, run_task=run_clientapp)


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
