"""End to end: privacy in `federator simulate` on Flower's Simulation Engine (Ray).

Local DP-SGD with each node's own ledger (one node runs out of budget mid-federation; the
ledgers are written by the Ray workers and read back here, in another process), and central
DP with client-side clipping whose accountant stops the federation before ``max_epsilon``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import child_env, run_cli, write_config

from federator.privacy import Accountant, PrivacyLedger, dataset_fingerprint, epsilon
from federator.server.plan import load_plan
from federator.simulations.partition import client_data

pytestmark = pytest.mark.integration

NODE_DELTA = 1e-5

# What `federator simulate CONFIG` runs, with a privacy budget on every simulated node (a
# partner's setting the federation config cannot set): the nodes get it from the ClientApp.
SIMULATE_WITH_BUDGET = """
import sys
from dataclasses import replace

from federator.server.plan import load_plan
from federator.server.progress import RichProgress
from federator.simulations.runner import simulate, simulated_nodes

plan = load_plan(sys.argv[1])
budget = {"max_epsilon": float(sys.argv[2]), "privacy_delta": float(sys.argv[3])}
simulate(plan, display=RichProgress(), nodes=replace(simulated_nodes(plan), **budget))
"""


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _only_run(client: Any, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return str(run.info.run_id)


def _rounds(client: Any, run_id: str, tmp_path: Path) -> list[dict[str, Any]]:
    path = client.download_artifacts(run_id, "federation/rounds.json", str(tmp_path))
    return list(json.loads(Path(path).read_text())["rounds"])


def test_local_dp_with_a_node_whose_budget_runs_out_mid_federation(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    cfg = write_config(
        tmp_path / "fed.toml",
        name="e2e-local-dp",
        runs_dir=runs_dir,
        rounds=3,
        extra="[privacy.local]\ntarget_epsilon = 2.0\ndelta = 1e-4\nmax_grad_norm = 1.0\n",
    )
    cfg.write_text(cfg.read_text().replace("max_client_spread = 0.5", ""))
    plan = load_plan(cfg)
    assert plan.privacy.local is not None
    # partition-0 already spent a whole earlier federation's budget on the same data.
    data = client_data(plan.data, 0).train
    fingerprint = dataset_fingerprint(data.x, data.y)
    charge = plan.privacy.local.round_charge(
        num_examples=len(data), batch_size=plan.training.batch_size, epochs=plan.training.epochs
    )
    ledgers = runs_dir / "nodes" / "privacy-ledgers"
    earlier = PrivacyLedger(ledgers / "partition-0.json")
    for rnd in (1, 2, 3):
        earlier.record(
            dataset=fingerprint, federation="earlier", run="r0", round=rnd, charge=charge
        )

    def total(rounds: int) -> float:
        return epsilon([charge] * rounds, delta=NODE_DELTA, accountant=Accountant.RDP)

    # Enough for one more round on partition-0, and for all three rounds on the others.
    budget = (total(4) + total(5)) / 2
    assert total(3) < budget
    argv = [str(cfg), f"{budget:.6f}", str(NODE_DELTA)]
    result = subprocess.run(
        [sys.executable, "-c", SIMULATE_WITH_BUDGET, *argv],
        cwd=tmp_path,
        env=child_env(MLFLOW_LOGGING_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PrivacyBudgetExhausted" in result.stdout
    assert "local DP spent" in result.stdout

    client = _client(f"sqlite:///{runs_dir / 'mlflow.db'}")
    run_id = _only_run(client, "e2e-local-dp")
    rounds = _rounds(client, run_id, tmp_path)
    assert [len(r["participants"]) for r in rounds] == [4, 3, 3]
    assert rounds[0]["refusals"] == []
    for r in rounds[1:]:
        (refusal,) = r["refusals"]
        assert refusal["phase"] == "train"
        assert "PrivacyBudgetExhausted" in refusal["reason"]
        assert "spent epsilon" in refusal["reason"]
    # ε per client per round: grows each round and ends at (within accounting slack) the target.
    per_client: dict[str, list[float]] = {}
    for r in rounds:
        for c in r["train_clients"]:
            per_client.setdefault(c["client"], []).append(c["metrics"]["dp-epsilon"])
    full = [eps for eps in per_client.values() if len(eps) == 3]
    assert len(full) == 3
    for eps in full:
        assert eps[0] < eps[1] < eps[2] <= 2.0 * 1.001
        assert eps[2] > 1.9

    versions = client.search_model_versions("name = 'e2e-local-dp'")
    assert versions
    for v in versions:
        assert v.tags["federator.privacy"] == "local-dp"
        assert v.tags["federator.privacy.local.delta"] == "0.0001"
        assert 0 < float(v.tags["federator.privacy.local.max_epsilon"]) <= 2.0 * 1.001
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/privacy_epsilon.png" in artifacts
    history = client.get_metric_history(run_id, "privacy/local-epsilon-max")
    assert len(history) == 3

    # The ledgers outlive the processes that wrote them.
    node0 = PrivacyLedger(ledgers / "partition-0.json").entries()
    assert [(e.federation, e.round) for e in node0] == [
        ("earlier", 1),
        ("earlier", 2),
        ("earlier", 3),
        ("e2e-local-dp", 1),
    ]
    for other in ("partition-1", "partition-2", "partition-3"):
        entries = PrivacyLedger(ledgers / f"{other}.json").entries()
        assert [e.round for e in entries] == [1, 2, 3]
        assert {e.run for e in entries} == {run_id}


def test_central_dp_accountant_stops_the_federation_early(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    cfg = write_config(
        tmp_path / "fed.toml",
        name="e2e-central-dp",
        runs_dir=runs_dir,
        rounds=4,
        extra=(
            "[privacy.central]\nside = 'client'\nnoise_multiplier = 2.0\nclipping_norm = 2.0\n"
            "delta = 1e-5\nmax_epsilon = 4.5\n"
        ),
    )
    cfg.write_text(cfg.read_text().replace("max_client_spread = 0.5", ""))
    result = run_cli("simulate", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped early" in result.stdout
    assert "central DP spent" in result.stdout

    client = _client(f"sqlite:///{runs_dir / 'mlflow.db'}")
    run_id = _only_run(client, "e2e-central-dp")
    run = client.get_run(run_id)
    assert "exceed the central DP budget" in run.data.tags["federator.stopped_early"]
    spent = [m.value for m in client.get_metric_history(run_id, "privacy/central-epsilon")]
    assert len(spent) == 3  # 4.01 after round 3; round 4 would reach 4.73
    assert spent == sorted(spent)
    assert spent[-1] <= 4.5
    for v in client.search_model_versions("name = 'e2e-central-dp'"):
        assert v.tags["federator.privacy"] == "central-dp"
        assert float(v.tags["federator.privacy.central.epsilon"]) <= 4.5
        assert v.tags["federator.privacy.central.delta"] == "1e-05"
