"""A node's SuperNode is admitted, retried while its previous session is live, or refused.

The SuperNodes here are tiny Python processes that print what Flower's would; the real
refusal is exercised by the returning-node deployment test."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from federator import DeploymentError
from federator.client._flwr_compat import NodeRuntime, node_loop
from federator.client.processes import flower_env, launch, wait_for_log
from federator.client.supernode import (
    ACTIVATION_REFUSED,
    ADMITTED,
    RunningNode,
    admit,
)

# Prints the n-th line of a script file (n = how many times it ran), then exits or lingers.
_SCRIPT = f"""
import sys, time
from pathlib import Path
count = Path(sys.argv[1])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
lines = Path(sys.argv[2]).read_text().splitlines()
line = lines[min(n, len(lines) - 1)]
print(line, flush=True)
if line.startswith("{ADMITTED}"):
    time.sleep(60)
sys.exit(1)
"""


def _node(tmp_path: Path, *outcomes: str) -> RunningNode:
    (tmp_path / "fake.py").write_text(_SCRIPT)
    (tmp_path / "outcomes").write_text("\n".join(outcomes))
    argv = [
        sys.executable,
        str(tmp_path / "fake.py"),
        str(tmp_path / "n"),
        str(tmp_path / "outcomes"),
    ]
    env = flower_env()
    return RunningNode(
        supernode=launch("supernode", argv, log=tmp_path / "supernode.log", env=env),
        executor=launch(
            "executor",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            log=tmp_path / "x.log",
            env=env,
        ),
        runtime=NodeRuntime.FEDERATOR,
        heartbeat_interval=node_loop.HEARTBEAT_INTERVAL,
        pull_interval=node_loop.PULL_INTERVAL,
    )


def _quick(seconds: float) -> None:
    time.sleep(min(seconds, 0.05))


def test_a_node_refused_while_its_old_session_lives_is_started_again_until_admitted(
    tmp_path: Path,
) -> None:
    refused = f"Exit Code: 305 {ACTIVATION_REFUSED} Failed to activate SuperNode."
    node = _node(tmp_path, refused, refused, f"{ADMITTED}: 7")
    said: list[str] = []
    running = node
    try:
        running = admit(node, timeout=30, on_retry=said.append, sleep=_quick)
        assert running.supernode.alive()
        assert running.supernode.pid != node.supernode.pid
        assert (tmp_path / "n").read_text() == "3"
        assert len(said) == 2
        assert "previous session" in said[0]
        assert "20 s" in said[0]  # 2 × the heartbeat interval our nodes announce
        log = (tmp_path / "supernode.log").read_text()
        assert log.count(ACTIVATION_REFUSED) == 2  # all attempts kept in the one log
    finally:
        running.stop()
        node.stop()


def test_any_other_failure_stops_the_node_at_once_with_the_reason(tmp_path: Path) -> None:
    node = _node(
        tmp_path, "Exit Code: 305 [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    said: list[str] = []
    with pytest.raises(DeploymentError, match="was not admitted") as err:
        admit(node, timeout=30, on_retry=said.append, sleep=_quick)
    assert "wrong CA" in str(err.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)  # the SuperNode's own words
    assert said == []
    assert (tmp_path / "n").read_text() == "1"
    assert not node.executor.alive()  # nothing left running


def test_a_key_refused_past_any_old_session_is_reported_unregistered(tmp_path: Path) -> None:
    """Retries stop once an old session must have expired, even with a long timeout."""
    ticks = iter(range(0, 10_000, 5))  # each look at the clock: 5 s later
    node = _node(tmp_path, f"{ACTIVATION_REFUSED} Failed to activate SuperNode.")
    said: list[str] = []
    with pytest.raises(DeploymentError, match="not registered") as err:
        admit(node, timeout=600, on_retry=said.append, sleep=_quick, clock=lambda: next(ticks))
    tries = int((tmp_path / "n").read_text())
    assert tries == len(said) + 1
    assert 2 <= tries <= node.session_expiry / 5 + 1
    assert "within 30 s" in str(err.value)
    assert not node.executor.alive()


def test_the_connect_timeout_bounds_the_wait(tmp_path: Path) -> None:
    node = _node(tmp_path, f"{ACTIVATION_REFUSED} Failed to activate SuperNode.")
    with pytest.raises(DeploymentError, match="previous session"):
        admit(node, timeout=1.0, on_retry=lambda why: None, sleep=_quick)
    assert (tmp_path / "n").read_text() == "1"
    assert not node.executor.alive()


def test_the_refusal_marker_is_flowers_activation_error_code() -> None:
    from flwr.supercore.error.base import ApiErrorCode

    assert f"[code: {int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED)}]" == ACTIVATION_REFUSED


def test_an_earlier_process_marker_in_the_same_log_does_not_count(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_text(f"{ADMITTED}: 7 (an earlier session)\n")
    proc = launch(
        "supernode", [sys.executable, "-c", "print('refused')"], log=log, env=flower_env()
    )
    assert not wait_for_log(proc, ADMITTED, timeout=10, sleep=_quick)
    assert proc.output().strip() == "refused"
    assert proc.tail() == "refused"
    assert ADMITTED in log.read_text()
