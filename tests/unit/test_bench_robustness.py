"""The robustness benchmark's core: its configs, and the tables it draws from results."""

from __future__ import annotations

from pathlib import Path

import pytest

from federator.client.tasks import Evaluation
from federator.server.federation.events import FederationSummary, RoundOutcome, RoundStatus
from federator.server.plan import build_plan
from federator.simulations.bench.robustness import (
    ATTACKS,
    CLEAN,
    DEFENCES,
    MODELS,
    Cell,
    accuracy_rows,
    cell_from,
    champion_rows,
    config_for,
    verdict_rows,
)


@pytest.mark.parametrize("model", list(MODELS))
def test_every_cell_is_a_valid_federation_with_what_the_table_says(
    model: str, tmp_path: Path
) -> None:
    for attack in ATTACKS:
        for d in DEFENCES:
            plan = build_plan(config_for(model, attack, d, rounds=3, runs_dir=tmp_path), source="t")
            assert plan.task_ref == model
            assert (plan.data.clients, plan.rounds) == (10, 3)
            assert plan.strategy.name == d.strategy
            assert (plan.screening.max_norm_ratio is not None) == d.screening
            assert plan.strategy.sampling.fraction_evaluate == 0
            assert plan.tracking.export_flavour is False
            if attack == CLEAN:
                assert plan.attack is None
            else:
                assert plan.attack is not None
                assert plan.attack.kind.value == attack
                assert len(plan.attack.attackers) == 2
    krum = next(d for d in DEFENCES if d.column == "multikrum")
    plan = build_plan(config_for(model, "scale", krum, rounds=1, runs_dir=tmp_path), source="t")
    assert plan.strategy.params.model_dump() == {"num_malicious_nodes": 2, "num_nodes_to_select": 8}


def _cell(accuracy: float, champion: int | None = None, attacked: bool = False) -> Cell:
    return Cell(
        accuracy=accuracy,
        champion_round=champion,
        champion_accuracy=None if champion is None else accuracy,
        champion_attacked=attacked,
        seconds=1.0,
    )


GRID = {
    CLEAN: {"fedavg": _cell(0.95, 5), "fedmedian": _cell(0.94), "fedavg+screening": _cell(0.95)},
    "scale": {
        "fedavg": _cell(0.30),
        "fedmedian": _cell(0.93),
        "fedavg+screening": _cell(0.951, 4, attacked=False),
    },
    "sign-flip": {"fedavg": _cell(0.90, 3, attacked=True), "fedmedian": _cell(0.80)},
}


def test_the_tables_compare_each_cell_with_clean_fedavg() -> None:
    rows = accuracy_rows(GRID, ["fedavg", "fedmedian", "krum"])
    assert rows[1] == ["scale", "0.300 (-65.0)", "0.930 (-2.0)", "–"]
    verdicts = {r[0]: r for r in verdict_rows(GRID)}
    assert set(verdicts) == {"scale", "sign-flip"}  # the clean row judges nothing
    assert verdicts["scale"][1:] == ["fedavg+screening", "0.951 (+0.1)", "met"]
    assert verdicts["sign-flip"][1:] == ["fedmedian", "0.800 (-15.0)", "not met"]
    champions = {r[0]: r[1:] for r in champion_rows(GRID)}
    assert champions["scale"] == ["none promoted", "round 4, 0.951, no attacker in it"]
    assert champions["sign-flip"] == ["round 3, 0.900, attackers in it, damaged", "–"]


def _outcome(rnd: int, accuracy: float | None, attackers: tuple[str, ...]) -> RoundOutcome:
    done = accuracy is not None
    return RoundOutcome(
        round=rnd,
        status=RoundStatus.COMPLETED if done else RoundStatus.SKIPPED,
        arrays=None,
        sampled=10,
        train_clients=[],
        eval_clients=[],
        refusals=[],
        train_metrics={},
        eval_metrics={},
        server_eval=Evaluation(loss=0.1, accuracy=accuracy, num_examples=9) if done else None,
        decision=None,
        wall_time=0.1,
        attackers=attackers,
        attackers_accepted=attackers,
    )


def test_a_cell_is_the_last_model_and_the_champion_with_its_attackers(tmp_path: Path) -> None:
    plan = build_plan(
        config_for("digits-mlp", "scale", DEFENCES[0], rounds=3, runs_dir=tmp_path), source="t"
    )
    outcomes = [_outcome(1, 0.8, ()), _outcome(2, 0.9, ("partition-1",)), _outcome(3, None, ())]
    summary = FederationSummary(plan=plan, outcomes=outcomes, duration=1.0, champion_round=2)
    assert cell_from(summary, 2.0) == Cell(
        accuracy=0.9, champion_round=2, champion_accuracy=0.9, champion_attacked=True, seconds=2.0
    )
    none = FederationSummary(plan=plan, outcomes=outcomes[:1], duration=1.0)
    assert cell_from(none, 1.0).champion_round is None
    with pytest.raises(ValueError, match="no round"):
        cell_from(FederationSummary(plan=plan, outcomes=outcomes[2:], duration=1.0), 1.0)
