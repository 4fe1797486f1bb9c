"""What `federator watch` reads from MLflow (a real SQLite store): the nodes' latest reports
and how far the champion's accuracy on each node's data fell since the round that trained it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from federator.server.plan.retrain import RetrainPolicy, TriggerKind, decide
from federator.server.tracking.serving_view import observe


def _log(client: MlflowClient, run_id: str, step: int, values: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])


def test_the_champions_accuracy_drop_per_node(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("fed", artifact_location=(tmp_path / "a").as_uri())
    client.create_registered_model("m")
    trained = client.create_run(experiment).info.run_id
    for rnd, accuracies in ((1, (0.70, 0.60, 0.65)), (2, (0.90, 0.80, 0.85))):
        _log(
            client,
            trained,
            rnd,
            {f"client/{p}/val_accuracy": a for p, a in zip("abc", accuracies, strict=True)},
        )
    versions = [
        client.create_model_version("m", "x", run_id=trained, tags={"federator.round": str(r)})
        for r in (1, 2)
    ]
    client.set_registered_model_alias("m", "champion", versions[1].version)
    champion = int(versions[1].version)
    newest = client.create_run(experiment).info.run_id  # later: the nodes report
    _log(client, newest, 1, {
        "serving/a/installed_accuracy": 0.70, "serving/a/installed_version": champion,
        "serving/b/installed_accuracy": 0.79, "serving/b/installed_version": champion,
        # c still has the older version installed: no comparison with the champion
        "serving/c/installed_accuracy": 0.10, "serving/c/installed_version": champion - 1,
        "serving/c/drifted_features": 0.4,
    })  # fmt: skip

    seen = observe(client, experiment="fed", model="m")
    assert seen.accuracy_drops == pytest.approx({"a": 0.20, "b": 0.01})
    assert seen.drifted == {"c": 0.4}
    assert seen.champion_at is not None
    now = datetime.now(UTC) + timedelta(seconds=1)
    fires = decide(RetrainPolicy(accuracy_drop=0.1, cooldown_hours=0), seen, now=now)
    assert fires is not None
    assert fires.kind is TriggerKind.ACCURACY
    assert "(a; at most 20.0%)" in fires.reason
    assert decide(RetrainPolicy(accuracy_drop=0.1, accuracy_nodes=2), seen, now=now) is None
