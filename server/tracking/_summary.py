"""A run's closing artifacts: plots, every round's record, where releases went, the champion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from federator.client.wire import MetricName
from federator.server.releases import DeliveryReport
from federator.server.tracking._records import outcome_from_record
from federator.server.tracking.plots import plot_clients, plot_privacy, plot_rounds


def log_summary(
    client: Any,
    run_id: str,
    *,
    staging: Path,
    records: Sequence[dict[str, Any]],
    deliveries: Sequence[DeliveryReport],
    champion: str | None,
) -> None:
    """Write the closing artifacts of ``run_id`` (runs on the tracking worker)."""
    outcomes = [outcome_from_record(r) for r in records]
    if outcomes:
        folder = staging / "plots"
        folder.mkdir(exist_ok=True)
        plot_rounds(outcomes, folder / "accuracy.png")
        plot_clients(outcomes, folder / "client_accuracy.png")
        if any(o.privacy for o in outcomes) or any(
            MetricName.DP_EPSILON in c.metrics for o in outcomes for c in o.train_clients
        ):
            plot_privacy(outcomes, folder / "privacy_epsilon.png")
        client.log_artifacts(run_id, str(folder), artifact_path="plots")
    client.log_dict(run_id, {"rounds": list(records)}, "federation/rounds.json")
    if deliveries:
        pushes = [
            {
                "version": r.version,
                "round": r.round,
                "nodes": [
                    {"client": d.pseudonym, "status": d.status, "reason": d.reason}
                    for d in r.deliveries
                ],
            }
            for r in deliveries
        ]
        client.log_dict(run_id, {"deliveries": pushes}, "releases/deliveries.json")
    if champion is not None:
        client.set_tag(run_id, "federator.champion_version", champion)
