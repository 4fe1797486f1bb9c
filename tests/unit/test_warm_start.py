"""A federation warm-started from a registered version: round 0 is that version's weights,
its first version's parent is that version; a version that does not exist or does not fit
the task is a config error before round 1."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeGrid, client_handlers, server_identity

from federator import ConfigError
from federator.server.federation.runner import run_federation
from federator.server.plan import build_plan
from federator.server.progress import LogProgress


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with server_identity():
        yield


def _run(raw: dict[str, Any], **federation: Any) -> Any:
    raw = copy.deepcopy(raw)
    raw["federation"] |= federation
    raw["gate"] = {"threshold": 0.0}
    raw["training"] = {"lr": 0.1, "momentum": 0.9, "epochs": 2}
    plan = build_plan(raw, source="test")
    return plan, run_federation(
        FakeGrid(client_handlers(4)), plan, display=LogProgress(lambda _: None)
    )


def _client(plan: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=plan.tracking.uri, registry_uri=plan.tracking.uri)


def _val_accuracy(client: Any, run_id: str, step: int) -> float:
    return next(
        m.value for m in client.get_metric_history(run_id, "val/accuracy") if m.step == step
    )


def test_a_warm_start_begins_from_the_champion(raw_config: dict[str, Any]) -> None:
    plan, first = _run(raw_config)
    client = _client(plan)
    model = plan.tracking.registered_model
    champion = client.get_model_version_by_alias(model, "champion")
    _, second = _run(raw_config, warm_start="champion", rounds=1)
    assert client.get_run(second.run_id).data.tags["federator.warm_start"] == str(champion.version)
    versions = client.search_model_versions(f"name = '{model}'")
    [child] = [v for v in versions if v.run_id == second.run_id]
    assert child.tags["federator.parent_version"] == str(champion.version)
    # Round 0 of the second run is the champion: its server-side evaluation equals that of
    # the champion's own round (same weights, same hold-out), not a fresh model's.
    warm = _val_accuracy(client, second.run_id, 0)
    champion_round = int(champion.tags["federator.round"])
    assert warm == pytest.approx(_val_accuracy(client, first.run_id, champion_round))
    assert warm > _val_accuracy(client, first.run_id, 0) + 0.2


@pytest.mark.parametrize(
    ("ref", "words"), [("7", "no such version"), ("challenger", "no such version")]
)
def test_a_missing_version_is_a_config_error(
    raw_config: dict[str, Any], ref: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        _run(raw_config, warm_start=ref)


def test_a_bad_reference_is_refused_by_the_schema(raw_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="warm_start"):
        _run(raw_config, warm_start="latest")
