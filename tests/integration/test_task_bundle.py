"""End to end: a coordinator's own task — a module no node has installed — travels to a real
deployment (127.0.0.1, TLS, node authentication) as a signed task bundle.

Three partners decide for themselves: site-a pins the bundle by name and digest, site-b
trusts every bundle its pinned release key signed, site-c pins another digest and refuses.
The federation trains, registers and releases with the two that agree; both install the
champion with its bundle, and ``federator node predict`` works there from a clean
environment. A bundle altered in transit is refused before any of it is imported, and the
nodes keep their installed model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from deployed import NODES, deployment, start_node, wait_for
from procs import BIN, free_port, run_cli
from safetensors.numpy import load_file

pytestmark = pytest.mark.integration
__all__ = ["deployment"]  # the fixture, imported for pytest

TASK = "iris_task:task"


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    x = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    order = np.random.default_rng(1).permutation(len(x))
    return x[order].astype(np.float32), bunch.target[order].astype(np.int64)


def _config(d: dict[str, Any]) -> Path:
    """The coordinator's config folder: the task module beside the config, nowhere else."""
    folder = d["tmp"] / "coordinator-side"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "iris_task.py", folder / "iris_task.py")
    cfg = folder / "iris.toml"
    cfg.write_text(
        f"""
[federation]
name = "e2e-deploy"
rounds = 2
seed = 3
[task]
name = "{TASK}"
requires = ["scikit-learn>=1.5"]
[data]
clients = 3
server_holdout = 0.3
[training]
epochs = 10
batch_size = 8
lr = 0.1
momentum = 0.9
[gate]
threshold = 0.5
[tracking]
runs_dir = "{d["tmp"] / "runs"}"
[release]
signing_key = "{d["kits"] / "coordinator" / "release.key"}"
"""
    )
    return cfg


def _start_partners(d: dict[str, Any], digest: str) -> dict[str, subprocess.Popen[str]]:
    x, y = _iris()
    policies = {
        "site-a": f'allowed_tasks = [{{ name = "{TASK}", sha256 = "{digest}" }}]\n',
        "site-b": "trust_release_key = true\n",
        "site-c": f'allowed_tasks = [{{ name = "{TASK}", sha256 = "{"0" * 64}" }}]\n',
    }
    nodes = {}
    for i, name in enumerate(NODES):
        d["data"][name] = d["tmp"] / f"{name}-iris.npz"
        np.savez(d["data"][name], x=x[i * 50 : (i + 1) * 50], y=y[i * 50 : (i + 1) * 50])
        policy = d["tmp"] / f"{name}-policy.toml"
        policy.write_text(policies[name])
        nodes[name] = start_node(d, name, port=free_port(), extra=["--policy", str(policy)])
    for proc in nodes.values():
        wait_for(proc, "connected:", timeout=90)
    return nodes


def _store(d: dict[str, Any], name: str) -> Path:
    return d["kits"] / "nodes" / name / "state" / "models"


def _mlp_predictions(weights: Path, x: np.ndarray) -> list[int]:
    """The iris MLP rebuilt here from its released weights, independently of Federator."""
    arrays = load_file(str(weights))
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).tolist()  # type: ignore[no-any-return]


def test_a_users_own_task_travels_as_a_bundle_the_partners_pin(
    deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = deployment
    cfg = _config(d)
    shown = run_cli("bundle", str(cfg), cwd=d["tmp"], env=d["env"])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    digest = re.findall(r"\b[0-9a-f]{64}\b", shown.stdout)[0]
    assert "scikit-learn>=1.5" in shown.stdout

    # No node could import the task by itself: it is in no environment, only beside the config.
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import iris_task"], cwd=d["tmp"], env=d["env"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode != 0
    assert "No module named 'iris_task'" in probe.stderr
    _start_partners(d, digest)
    kit = d["kits"] / "coordinator"
    address = f"127.0.0.1:{d['port']}"
    result = run_cli(
        "run", str(cfg), "--coordinator", address, "--kit", str(kit),
        cwd=d["tmp"], env=d["env"], timeout=900,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert "Federation 'e2e-deploy' finished" in out, out[-6000:]
    assert f"task {TASK} from its bundle, sha256 {digest}" in out
    # site-c said no, with the reason and the line to pin it with; the others went on.
    assert "TaskBundleRefused" in out
    assert "which this node's policy does not allow" in out
    assert f'sha256 = "{digest}"' in out

    x, _ = _iris()
    for name in ("site-a", "site-b"):
        store = _store(d, name)
        current = store / "current"
        assert current.is_symlink(), f"{name} installed no release"
        version = store / os.readlink(current)
        # The node keeps the very code the model was trained with, of the pinned digest.
        assert hashlib.sha256((version / "task.zip").read_bytes()).hexdigest() == digest
        np.save(d["tmp"] / "rows.npy", x[:20])
        predicted = run_cli(
            "node", "predict", "--store", str(store), "--input", str(d["tmp"] / "rows.npy"),
            cwd=d["tmp"], env=d["env"],
        )  # fmt: skip
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        rows = [line.split(",") for line in predicted.stdout.split() if re.match(r"\d+,\d+$", line)]
        expected = _mlp_predictions(version / "weights.safetensors", x[:20])
        assert [int(p) for _, p in rows] == expected
    assert not (_store(d, "site-c") / "current").exists()
    assert not (_store(d, "site-c") / "tasks").exists(), "site-c unpacked a bundle it refused"
    monkeypatch.syspath_prepend(str(cfg.parent))  # this process packs it, as `run` does
    _altered_bundle_is_refused(d, cfg)


def _altered_bundle_is_refused(d: dict[str, Any], cfg: Path) -> None:
    """The same submission with task.zip altered after signing: refused, nothing imported,
    every node keeps its model."""
    from federator.server.deploy.bundle import pack_task
    from federator.server.deploy.kits import load_coordinator_kit
    from federator.server.deploy.submit import submit_run, submitted_config

    before = {n: os.readlink(_store(d, n) / "current") for n in ("site-a", "site-b")}
    plan, raw = submitted_config(cfg)
    bundle = pack_task(plan, raw, config=cfg)
    assert bundle is not None
    archive = bytearray(bundle.archive)
    archive[len(archive) // 2] ^= 0x01
    altered = dataclasses.replace(bundle, archive=bytes(archive))
    kit = load_coordinator_kit(d["kits"] / "coordinator")
    lines: list[str] = []
    status = submit_run(
        raw,
        coordinator=f"127.0.0.1:{d['port']}",
        ca_cert=kit.ca_cert,
        federation=kit.federation,
        state=d["tmp"] / "tamper-state",
        bundle=altered,
        echo=lines.append,
        timeout=300,
    )
    log = "\n".join(lines)
    assert status == "finished:failed", log[-4000:]
    assert "task.zip does not match its signed sha256 digest" in log, log[-4000:]
    assert {n: os.readlink(_store(d, n) / "current") for n in before} == before
