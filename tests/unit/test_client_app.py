"""The ClientApp's handlers, called the way Flower calls them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fakes import client_context, instruction, server_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from federator.client import app as client
from federator.client.mods import refusing
from federator.client.wire import ReplyCode
from federator.server.federation.instructions import initial_arrays, instructions_for
from federator.server.plan import FederationPlan, build_plan
from federator.simulations.partition import client_data


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


@pytest.fixture
def plan(raw_config: dict[str, Any]) -> FederationPlan:
    return build_plan(raw_config, source="test")


def _msg(
    plan: FederationPlan,
    kind: str,
    *,
    config: ConfigRecord | None = None,
    arrays: ArrayRecord | None = None,
) -> Message:
    cfg = config if config is not None else instructions_for(plan).to_config()
    cfg["server-round"] = 1
    return instruction(
        RecordDict({"arrays": arrays or initial_arrays(plan.task(), 0), "config": cfg}),
        node_id=11,
        kind=kind,
    )


def _handle(kind: str, msg: Message, partition: int = 0, partitions: int = 4) -> Message:
    fn = {"train": client.train, "evaluate": client.evaluate, "query": client.hello}[kind]
    return refusing(msg, client_context(partition, partitions, 11), fn)


def test_train_returns_updated_weights_count_and_label(plan: FederationPlan) -> None:
    reply = _handle("train", _msg(plan, "train"), partition=2)
    assert not reply.has_error()
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(client_data(plan.data, 2).train)
    assert {"train-loss", "train-accuracy"} <= set(metrics)
    assert reply.content["federator"]["label"] == "partition-2"
    before = initial_arrays(plan.task(), 0)
    after = reply.content["arrays"]
    assert set(after) == set(before)
    assert not np.array_equal(after["0.weight"].numpy(), before["0.weight"].numpy())


def test_train_is_reproducible(plan: FederationPlan) -> None:
    a = _handle("train", _msg(plan, "train"))
    b = _handle("train", _msg(plan, "train"))
    assert np.array_equal(
        a.content["arrays"]["0.weight"].numpy(), b.content["arrays"]["0.weight"].numpy()
    )


def test_evaluate_reports_accuracy_on_validation_split(plan: FederationPlan) -> None:
    reply = _handle("evaluate", _msg(plan, "evaluate"), partition=1)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(client_data(plan.data, 1).val)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_hello_introduces_the_node(plan: FederationPlan) -> None:
    reply = _handle("query", _msg(plan, "query"), partition=3)
    assert reply.content["federator"]["label"] == "partition-3"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda cfg: ConfigRecord({"other": 1}), "carries no 'federator' instructions"),
        (lambda cfg: ConfigRecord({"federator": '{"task": 1}'}), "malformed instructions"),
        (
            lambda cfg: ConfigRecord(
                {"federator": cfg["federator"].replace('"digits-mlp"', '"no-such-task"')}
            ),
            "TaskError",
        ),
    ],
)
def test_bad_instructions_are_refused(plan: FederationPlan, mutate: Any, reason: str) -> None:
    good = instructions_for(plan).to_config()
    reply = _handle("train", _msg(plan, "train", config=mutate(good)))
    assert reply.has_error()
    assert reply.error.code == ReplyCode.REFUSED
    assert reason in (reply.error.reason or "")


def test_the_client_app_itself_applies_the_mods(plan: FederationPlan) -> None:
    """Flower's ClientApp runs our handlers inside `refusing` and `packed_io`: a refusal is
    an error reply, and packed arrays come back packed."""
    from federator.client.packing import is_packed, pack

    app = client.build_client_app()
    ctx = client_context(0, 4, 11)
    wrong = ArrayRecord({"0.weight": Array(np.zeros((3, 3), np.float32))})
    refused = app(_msg(plan, "train", arrays=wrong), ctx)
    assert refused.has_error()
    assert refused.error.code == ReplyCode.REFUSED
    assert "array keys differ" in (refused.error.reason or "")
    packed = app(_msg(plan, "train", arrays=pack(initial_arrays(plan.task(), 0))), ctx)
    assert not packed.has_error(), packed.error.reason if packed.has_error() else ""
    assert is_packed(packed.content.array_records["arrays"])


def test_global_model_that_does_not_fit_is_refused(plan: FederationPlan) -> None:
    wrong = ArrayRecord({"0.weight": Array(np.zeros((3, 3), np.float32))})
    reply = _handle("train", _msg(plan, "train", arrays=wrong))
    assert reply.has_error()
    assert "array keys differ from the global model" in (reply.error.reason or "")


def test_nan_global_model_is_never_loaded(plan: FederationPlan) -> None:
    arrays = initial_arrays(plan.task(), 0)
    arrays["0.weight"] = Array(np.full(arrays["0.weight"].numpy().shape, np.nan, np.float32))
    reply = _handle("evaluate", _msg(plan, "evaluate", arrays=arrays))
    assert reply.has_error()
    assert "NaN" in (reply.error.reason or "")


def test_simulation_size_mismatch_is_refused(plan: FederationPlan) -> None:
    reply = _handle("train", _msg(plan, "train"), partitions=6)
    assert "plans 4 clients but this simulation runs 6 nodes" in (reply.error.reason or "")
