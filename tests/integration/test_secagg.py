"""SecAgg+ end to end: `federator simulate` with ``[privacy.secagg]`` on Flower's Simulation
Engine, dropouts injected by a task (`secagg_task`), results read back from MLflow.

Three clients, three shares, threshold two. Round 1: one client drops after training — below
the threshold, so the new model must be the exact weighted mean of the two survivors' updates
(up to SecAgg+'s quantisation step). Round 2: two drop — beyond it, so the round must abort,
be reported as skipped and register nothing. Round 3: nobody drops, and it starts from round
1's model. The expected means are computed here from what each client wrote down, not by
anything SecAgg+ or Federator computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from procs import child_env, run_cli, write_config

pytestmark = pytest.mark.integration

CLIPPING, QUANTIZATION, MAX_WEIGHT = 8.0, 4_194_304, 500.0

SECAGG = f"""
[privacy.secagg]
num_shares = 3
reconstruction_threshold = 2
clipping_range = {CLIPPING}
quantization_range = {QUANTIZATION}
max_weight = {MAX_WEIGHT}
timeout = 120
"""


def _client_files(folder: Path, rnd: int, kind: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob(f"round-{rnd}-{kind}-*.npz")):
        with np.load(path) as f:
            out.append({k: f[k] for k in f.files})
    return out


def _update(rec: dict[str, Any], key: str) -> np.ndarray:
    return rec[f"after/{key}"].astype(np.float64) - rec[f"before/{key}"].astype(np.float64)


def _mean(recs: list[dict[str, Any]], key: str, *, weighted: bool = True) -> np.ndarray:
    weights = [float(r["n"]) if weighted else 1.0 for r in recs]
    total = sum(w * _update(r, key) for r, w in zip(recs, weights, strict=True))
    return np.asarray(total) / sum(weights)


def _tolerance(recs: list[dict[str, Any]]) -> float:
    """Each survivor's scaled update is rounded by < one step 2·c/Q; the sum is divided by
    Σ n/max_weight. Plus float32 rounding of the stored global model."""
    step = 2 * CLIPPING / QUANTIZATION
    return len(recs) * step * MAX_WEIGHT / sum(float(r["n"]) for r in recs) + 1e-6


def _registered(client: Any, run_id: str, rnd: int, dst: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = client.download_artifacts(run_id, f"models/round-{rnd:04d}/weights.safetensors", dst)
    return dict(load_file(path))


def test_secagg_exact_below_threshold_and_clean_abort_beyond(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runs_dir, records = tmp_path / "runs", tmp_path / "updates"
    records.mkdir()
    cfg = write_config(
        tmp_path / "fed.toml", name="e2e-secagg", runs_dir=runs_dir, clients=3, rounds=3
    )
    text = cfg.read_text().replace('name = "digits-mlp"', 'name = "secagg_task:task"')
    text = text.replace("[data]\n", '[data]\npartitioner = "dirichlet"\n')
    text = text.replace("max_client_spread = 0.5", "").replace("threshold = 0.5", "threshold = 0")
    cfg.write_text(text + SECAGG)
    env = child_env(
        PYTHONPATH=str(Path(__file__).parent),
        SECAGG_TEST_DIR=str(records),
        SECAGG_TEST_DROPS="1:1,2:2",
    )
    result = run_cli("simulate", str(cfg), cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "secure aggregation aborted" in result.stdout
    assert "injected dropout in round 1" in result.stdout

    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'e2e-secagg'")
    assert sorted(int(v.tags["federator.round"]) for v in versions) == [1, 3]  # 2 skipped
    (run_id,) = {v.run_id for v in versions}
    history = {
        key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in ("round/participants", "round/skipped")
    }
    assert history == {"round/participants": [2, 0, 3], "round/skipped": [0, 1, 0]}
    assert {v.tags["federator.privacy"] for v in versions} == {"secagg"}

    # Round 1: the exact weighted mean of the two survivors' updates.
    sent, dropped = _client_files(records, 1, "sent"), _client_files(records, 1, "dropped")
    assert (len(sent), len(dropped)) == (2, 1)
    assert len({int(r["n"]) for r in sent}) == 2  # unequal weights: weighting is visible
    round1 = _registered(client, run_id, 1, tmp_path / "v1")
    tol = _tolerance(sent)
    assert tol < 1e-4
    for key, value in round1.items():
        before = sent[0][f"before/{key}"].astype(np.float64)
        error = np.abs(value.astype(np.float64) - (before + _mean(sent, key))).max()
        assert error <= tol, (key, error, tol)
    # The check can fail: an unweighted mean, or one that includes the dropped client, is off.
    key = "net.0.weight" if "net.0.weight" in round1 else sorted(round1)[0]
    got = round1[key].astype(np.float64) - sent[0][f"before/{key}"]
    assert np.abs(got - _mean(sent, key, weighted=False)).max() > 10 * tol
    assert np.abs(got - _mean(sent + dropped, key)).max() > 10 * tol

    # Round 2 aborted: nothing registered; round 3 starts from round 1's model, all three sent.
    assert len(_client_files(records, 2, "dropped")) == 2
    third = _client_files(records, 3, "sent")
    assert len(third) == 3
    for key, value in round1.items():
        np.testing.assert_array_equal(third[0][f"before/{key}"], value)
    round3 = _registered(client, run_id, 3, tmp_path / "v3")
    for key, value in round3.items():
        error = np.abs(value.astype(np.float64) - (round1[key] + _mean(third, key))).max()
        assert error <= _tolerance(third), (key, error)
