"""The coordinator's side of serving reports: validated, merged per node, into MLflow's
metrics, the round's record and the display; a bad report is refused, the update is not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes import instruction, server_identity
from flwr.app import ConfigRecord, Message, RecordDict

from federator.client.serving.report import DriftSummary, RolloutNote, ServingReport
from federator.client.wire import LABEL_KEY, META_KEY, MONITOR_KEY
from federator.server.federation.events import RoundOutcome, RoundStatus
from federator.server.federation.monitoring import collect, serving_metrics
from federator.server.progress import serving_lines
from federator.server.tracking._records import outcome_from_record, outcome_record


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _reply(node_id: int, report: str | None) -> Message:
    meta = ConfigRecord({LABEL_KEY: "x"})
    if report is not None:
        meta[MONITOR_KEY] = report
    sent = instruction(RecordDict({}), node_id=node_id)
    return Message(content=RecordDict({META_KEY: meta}), reply_to=sent)


DRIFT = DriftSummary(
    rows=500, ks_max=0.4, drifted_features=0.25, psi_max=0.9, psi_mean=0.2, prediction_js=0.3
)


def test_reports_are_merged_per_node_and_bad_ones_refused() -> None:
    train = ServingReport(
        version=3, requests=10, rows=20, events=(RolloutNote(kind="started", candidate=4),)
    )
    evaluate = ServingReport(
        requests=12,
        rows=24,
        fallbacks=1,
        drift=DRIFT,
        events=(RolloutNote(kind="fell-back", candidate=4, stable=3, reason="boom"),),
    )
    names = {1: "aaa", 2: "bbb", 3: "ccc"}
    got = collect(
        [
            _reply(1, train.model_dump_json()),
            _reply(2, '{"requests": -5}'),
            _reply(1, evaluate.model_dump_json()),
            _reply(3, None),
        ],
        pseudonym=names.__getitem__,
    )
    [node] = got.reports
    assert node.pseudonym == "aaa"
    assert (node.report.version, node.report.requests, node.report.fallbacks) == (3, 12, 1)
    assert [e.kind for e in node.report.events] == ["started", "fell-back"]
    assert node.report.drift == DRIFT
    [(who, why)] = got.refused
    assert who == "bbb"
    assert "serving report refused" in why
    metrics = serving_metrics(got.reports)
    assert metrics["serving/aaa/rows"] == 24
    assert metrics["serving/aaa/fallbacks"] == 1
    assert metrics["serving/aaa/drifted_features"] == 0.25
    outcome = RoundOutcome(
        round=2, status=RoundStatus.SKIPPED, arrays=None, sampled=1, train_clients=[],
        eval_clients=[], refusals=[], train_metrics={}, eval_metrics={}, server_eval=None,
        decision=None, wall_time=1.0, serving=got.reports,
    )  # fmt: skip
    [line] = serving_lines(outcome)
    assert line.startswith("serving aaa: v3, 24 rows, drift in 25% of features")
    assert "fell-back v4: boom" in line
    again = outcome_from_record(outcome_record(outcome, version=None))
    assert again.serving == outcome.serving


def test_a_rejected_update_still_delivers_its_serving_report() -> None:
    """Screening refuses the update (no metrics at all); what the node says of its model
    service still reaches the round, under the directory's pseudonym."""
    from types import SimpleNamespace

    from federator.server.federation.reporting import RoundReport
    from federator.strategies import screen_replies

    report = ServingReport(version=2, requests=7, rows=7, fallbacks=1)
    screened = screen_replies([_reply(5, report.model_dump_json())], expected=None)
    assert screened.accepted == []
    assert len(screened.rejected) == 1
    directory = SimpleNamespace(entry=lambda node_id: SimpleNamespace(pseudonym=f"p{node_id}"))
    outcome = RoundOutcome(
        round=1, status=RoundStatus.SKIPPED, arrays=None, sampled=1, train_clients=[],
        eval_clients=[], refusals=[], train_metrics={}, eval_metrics={}, server_eval=None,
        decision=None, wall_time=1.0,
    )  # fmt: skip
    got = RoundReport(directory).with_serving(outcome, screened)  # type: ignore[arg-type]
    [node] = got.serving
    assert (node.pseudonym, node.report.fallbacks) == ("p5", 1)
