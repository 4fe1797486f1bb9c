"""Model-version privacy tags: the largest local ε in a model's ancestry, δ, the modes."""

from __future__ import annotations

from pathlib import Path

from federator.server.federation.events import ClientResult, RoundOutcome, RoundStatus
from federator.server.plan import load_plan
from federator.server.tracking._versions import Lineage, Registrar


def _outcome(epsilons: dict[str, float]) -> RoundOutcome:
    return RoundOutcome(
        round=2,
        status=RoundStatus.COMPLETED,
        arrays=None,
        sampled=len(epsilons),
        train_clients=[
            ClientResult(pseudonym=p, num_examples=10, metrics={"dp-epsilon": e})
            for p, e in epsilons.items()
        ],
        eval_clients=[],
        refusals=[],
        train_metrics={},
        eval_metrics={},
        server_eval=None,
        decision=None,
        wall_time=0.0,
    )


def _registrar(tmp_path: Path, lineage: Lineage) -> Registrar:
    return Registrar(
        plan=load_plan("mnist-dp"),  # [privacy.local] ε = 8, δ = 1e-5
        client=None,
        run_id="run",
        artifact_uri="file:///nowhere",
        code_version="test",
        staging=tmp_path,
        releases=None,
        lineage=lineage,
    )


def test_the_largest_epsilon_of_the_ancestry_is_tagged(tmp_path: Path) -> None:
    lineage = Lineage(local_epsilons={"site-a": 5.0, "site-c": 1.0})
    registrar = _registrar(tmp_path, lineage)
    outcome = _outcome({"site-a": 2.0, "site-b": 3.0})
    epsilons = registrar._local_epsilons(outcome)
    assert epsilons == {"site-a": 5.0, "site-b": 3.0, "site-c": 1.0}
    assert lineage.local_epsilons == {"site-a": 5.0, "site-c": 1.0}  # not yet registered
    tags = registrar._privacy_tags(outcome, local_epsilons=epsilons)
    assert tags == {
        "federator.privacy": "local-dp",
        "federator.privacy.local.delta": "1e-05",
        "federator.privacy.local.max_epsilon": "5.000000",
    }


def test_a_first_round_tags_its_own_participants(tmp_path: Path) -> None:
    registrar = _registrar(tmp_path, Lineage())
    outcome = _outcome({"site-a": 0.7, "site-b": 0.9})
    tags = registrar._privacy_tags(outcome, local_epsilons=registrar._local_epsilons(outcome))
    assert tags["federator.privacy.local.max_epsilon"] == "0.900000"
