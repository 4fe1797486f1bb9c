"""The release service: it signs a promoted version, delivers only what was committed, and says
which push of a release is its first — on its own, and inside a federation writing to MLflow."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import FakeGrid, client_handlers, server_identity
from flwr.app import ConfigRecord, Message, RecordDict

from federator.client.keys import generate_keys, load_private_key, load_public_key
from federator.client.release import open_release
from federator.client.tasks import DIGITS_MLP
from federator.client.weights import model_arrays, save_safetensors
from federator.client.wire import FILE_PREFIX, RELEASE_ACTION, RELEASE_KEY, DeliveryStatus
from federator.server.federation.checkpoint import CHECKPOINT_TAG
from federator.server.federation.runner import run_federation
from federator.server.plan import FederationPlan, build_plan
from federator.server.progress import LogProgress
from federator.server.releases import (
    DeliveryReport,
    PromotedVersion,
    ReleaseService,
    ReleaseSigner,
    SignedRelease,
)


class _Channel:
    """Stands in for the release channel: every push reaches its one node."""

    def __init__(self) -> None:
        self.pushed: list[int] = []

    def push(self, release: SignedRelease) -> DeliveryReport:
        self.pushed.append(release.version)
        return DeliveryReport(version=release.version, round=release.round, deliveries=[])


class _Recorder:
    def __init__(self) -> None:
        self.reports: list[DeliveryReport] = []

    def on_release(self, report: DeliveryReport) -> None:
        self.reports.append(report)


@pytest.fixture
def plan(raw_config: dict[str, Any]) -> FederationPlan:
    return build_plan(raw_config, source="test")


def _promoted(folder: Path, version: int) -> PromotedVersion:
    folder.mkdir(parents=True)
    torch.manual_seed(version)
    save_safetensors(model_arrays(DIGITS_MLP.build_model()), folder / "weights.safetensors")
    (folder / "lineage.json").write_text(json.dumps({"round": version}))
    return PromotedVersion(
        version=version,
        previous_version=version - 1 or None,
        round=version,
        run_id="run-1",
        reasons=["accuracy ok"],
        metrics={"accuracy": 0.9},
        folder=folder,
    )


def test_a_signed_release_is_delivered_only_once_committed(
    plan: FederationPlan, tmp_path: Path
) -> None:
    keys = generate_keys(tmp_path / "keys")
    channel, recorder = _Channel(), _Recorder()
    service = ReleaseService(
        ReleaseSigner(load_private_key(keys.private)),
        plan=plan,
        channel=channel,  # type: ignore[arg-type]
        recorders=[recorder],
    )
    first = service.sign(_promoted(tmp_path / "v1", 1))
    statement = open_release(first.envelope, load_public_key(keys.public))
    assert (statement.predicate.model, statement.predicate.version) == ("unit", 1)
    assert statement.predicate.federation_run_id == "run-1"

    service.on_round(object())  # signed, not committed: nothing goes out
    assert service.deliver() is None
    assert channel.pushed == []
    assert recorder.reports == []

    service.committed(first)
    report = service.deliver()
    assert report is not None
    assert report.first_push
    assert channel.pushed == [1]
    assert recorder.reports == [report]

    second = service.sign(_promoted(tmp_path / "v2", 2))
    again = service.deliver()  # version 2 is not committed yet: 1 is still the newest
    assert again is not None
    assert not again.first_push
    assert channel.pushed == [1, 1]
    service.committed(second)
    service.committed(first)  # an older one committed late never replaces a newer one
    service.deliver()
    assert channel.pushed == [1, 1, 2]
    assert [r.first_push for r in recorder.reports] == [True, False, True]


def test_a_resumed_service_offers_the_stored_champion_again(
    plan: FederationPlan, tmp_path: Path
) -> None:
    keys = generate_keys(tmp_path / "keys")
    signer = ReleaseSigner(load_private_key(keys.private))
    stored = signer.sign(
        model="unit",
        version=3,
        previous_version=None,
        round=3,
        federation="unit",
        run_id="run-1",
        task="digits-mlp",
        reasons=[],
        metrics={},
        folder=_promoted(tmp_path / "v3", 3).folder,
    )
    channel, recorder = _Channel(), _Recorder()
    service = ReleaseService(
        signer,
        plan=plan,
        channel=channel,  # type: ignore[arg-type]
        recorders=[recorder],
    )
    service.resume(stored, pushed_rounds=[3])
    report = service.deliver()
    assert report is not None
    assert channel.pushed == [3]
    assert not report.first_push  # its deliveries were recorded before the crash


# -- inside a federation: the writer hands a release over only after its commit -----------


@pytest.fixture
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.mark.usefixtures("_identity")
def test_no_node_gets_a_version_before_its_round_is_committed(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    keys = generate_keys(tmp_path / "keys")
    raw = copy.deepcopy(raw_config)
    raw["federation"]["rounds"] = 3
    raw["gate"] = {"threshold": 0.0, "max_regression": 1.0}  # every round is promoted
    raw["release"] = {"signing_key": str(keys.private)}
    # Rounds may run ahead of their commits, so only the hand-over keeps a release back.
    raw["tracking"]["max_unsaved_rounds"] = 2
    plan = build_plan(raw, source="test")
    mlflow = MlflowClient(tracking_uri=plan.tracking.uri, registry_uri=plan.tracking.uri)
    seen: list[tuple[int, int]] = []  # (released round, committed round) at delivery

    def committed() -> int:
        experiment = mlflow.get_experiment_by_name("unit")
        (run,) = mlflow.search_runs([experiment.experiment_id])
        return int(run.data.tags.get(CHECKPOINT_TAG, 0))

    def answering(handler: Any) -> Any:
        def handle(msg: Message) -> Message:
            if msg.metadata.message_type != f"query.{RELEASE_ACTION}":
                return handler(msg)  # type: ignore[no-any-return]
            record = msg.content.config_records[RELEASE_KEY]
            released = json.loads(bytes(record[FILE_PREFIX + "lineage.json"]))["round"]
            seen.append((released, committed()))
            status = ConfigRecord({"status": DeliveryStatus.INSTALLED.value})
            return Message(content=RecordDict({RELEASE_KEY: status}), reply_to=msg)

        return handle

    handlers = {n: answering(h) for n, h in client_handlers(4).items()}
    summary = run_federation(FakeGrid(handlers), plan, display=LogProgress(lambda _: None))
    assert summary.champion_round is not None
    assert seen, "no release was delivered"
    assert all(rnd <= done for rnd, done in seen), seen
    assert max(rnd for rnd, _ in seen) == summary.champion_round  # the last one went out too
    versions = mlflow.get_metric_history(summary.run_id, "release/version")
    assert len({m.step for m in versions}) == len(versions)  # one record per release
