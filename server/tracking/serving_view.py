"""``federator monitor``: what each node's model service reported, from the federation's
newest MLflow run (the ``serving/<pseudonym>/…`` metrics the rounds logged)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from federator import TrackingError
from federator.server.federation.monitoring import INSTALLED_ACCURACY, INSTALLED_VERSION
from federator.server.plan.retrain import Observation
from federator.server.tracking._records import client_val_metric
from federator.server.tracking._run import STARTED_BY_TAG

_PREFIX = "serving/"
RETRAIN_PREFIX = "retrain: "  # how `federator watch` starts the started_by text


@dataclass(frozen=True)
class ServingRow:
    """One node (by pseudonym), as its latest report left it."""

    pseudonym: str
    round: int  # the round whose replies carried the latest report
    values: dict[str, float]

    def get(self, key: str) -> float | None:
        return self.values.get(key)


@dataclass(frozen=True)
class ServingView:
    """The run the rows come from, and the rows in pseudonym order."""

    run_id: str
    status: str
    rows: list[ServingRow]


def serving_view(client: Any, experiment: str) -> ServingView:
    """The newest run of ``experiment`` and its nodes' latest serving reports;
    `TrackingError` if the experiment has no run."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs(
                [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
            )
            if found
            else []
        )
    except MlflowException as err:
        raise TrackingError(f"cannot read experiment {experiment!r}: {err}") from None
    if not runs:
        raise TrackingError(f"experiment {experiment!r} has no runs yet")
    run = runs[0]
    nodes: dict[str, dict[str, float]] = {}
    rounds: dict[str, int] = {}
    for key in run.data.metrics:
        if not key.startswith(_PREFIX):
            continue
        pseudonym, _, name = key.removeprefix(_PREFIX).partition("/")
        history = client.get_metric_history(run.info.run_id, key)
        latest = max(history, key=lambda m: m.step)
        nodes.setdefault(pseudonym, {})[name] = latest.value
        rounds[pseudonym] = max(rounds.get(pseudonym, 0), int(latest.step))
    rows = [ServingRow(p, rounds[p], nodes[p]) for p in sorted(nodes)]
    return ServingView(run.info.run_id, run.info.status, rows)


def observe(client: Any, *, experiment: str, model: str) -> Observation:
    """What `federator.server.plan.retrain.decide` needs: each node's drifted share in the
    newest run, how far the champion's accuracy on each node's data has fallen since it was
    trained, when the champion of ``model`` was registered, when the last retraining
    federation (a run tagged as started by a retrain trigger) started."""
    from mlflow.exceptions import MlflowException

    try:
        rows = serving_view(client, experiment).rows
    except TrackingError:
        rows = []
    drifted = {r.pseudonym: s for r in rows if (s := r.get("drifted_features")) is not None}
    try:
        champion = client.get_model_version_by_alias(model, "champion")
    except MlflowException:
        champion = None
    found = client.get_experiment_by_name(experiment)
    retrains = (
        client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{STARTED_BY_TAG}` LIKE '{RETRAIN_PREFIX}%'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found
        else []
    )
    return Observation(
        drifted=drifted,
        accuracy_drops=_accuracy_drops(client, champion, rows) if champion else {},
        champion_at=_at(champion.creation_timestamp) if champion else None,
        last_retrain_at=_at(retrains[0].info.start_time) if retrains else None,
    )


def _accuracy_drops(client: Any, champion: Any, rows: list[ServingRow]) -> dict[str, float]:
    """Per node whose latest report measured the champion: the accuracy that node reported
    for it in the round that trained it, minus the accuracy it reports now."""
    version, trained_in = int(champion.version), champion.run_id
    at_round = int(champion.tags.get("federator.round", 0))
    drops: dict[str, float] = {}
    for row in rows:
        now = row.get(INSTALLED_ACCURACY)
        if now is None or row.get(INSTALLED_VERSION) != version:
            continue
        history = client.get_metric_history(
            trained_in, client_val_metric(row.pseudonym, "accuracy")
        )
        then = [m.value for m in history if m.step == at_round]
        if then:
            drops[row.pseudonym] = then[-1] - now
    return drops


def _at(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


__all__ = ["RETRAIN_PREFIX", "ServingRow", "ServingView", "observe", "serving_view"]
