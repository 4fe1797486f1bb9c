"""``federator monitor``: what each node's model service reported, from the federation's
newest MLflow run (the ``serving/<pseudonym>/…`` metrics the rounds logged)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federator import TrackingError

_PREFIX = "serving/"


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


__all__ = ["ServingRow", "ServingView", "serving_view"]
