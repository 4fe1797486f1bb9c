"""Local DP: accounting, the node's ledger and policy, and refusals before training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from federator import ConfigError, DataError, PolicyRefused, PrivacyBudgetExhausted
from federator.privacy import (
    Accountant,
    Charge,
    LocalDpTarget,
    NodePrivacyPolicy,
    PrivacyLedger,
    authorize,
    check_loader,
    check_model,
    epsilon,
    refuse_non_private,
)


def _target(**kw: object) -> LocalDpTarget:
    args: dict[str, object] = dict(
        target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0, accountant=Accountant.RDP, rounds=5
    )
    args.update(kw)
    return LocalDpTarget(**args)  # type: ignore[arg-type]


def test_rdp_matches_a_direct_opacus_computation() -> None:
    # Independent path: Opacus's own RDP functions, composed by hand over two charges.
    from opacus.accountants.analysis import rdp

    orders = list(range(2, 257))
    a = Charge(noise_multiplier=1.1, sample_rate=0.05, steps=120)
    b = Charge(noise_multiplier=0.9, sample_rate=0.1, steps=30)
    total = rdp.compute_rdp(q=0.05, noise_multiplier=1.1, steps=120, orders=orders) + (
        rdp.compute_rdp(q=0.1, noise_multiplier=0.9, steps=30, orders=orders)
    )
    expected, _ = rdp.get_privacy_spent(orders=orders, rdp=total, delta=1e-5)
    got = epsilon([a, b], delta=1e-5, accountant=Accountant.RDP)
    assert got == pytest.approx(float(expected), abs=1e-9)
    assert epsilon([], delta=1e-5, accountant=Accountant.RDP) == 0.0


def test_planned_noise_meets_the_target_over_all_rounds() -> None:
    t = _target(target_epsilon=3.0, rounds=4)
    c = t.round_charge(num_examples=400, batch_size=32, epochs=2)
    assert c.steps == 2 * 13
    eps = epsilon([c] * 4, delta=1e-5, accountant=Accountant.RDP)
    assert 3.0 - 0.01 < eps <= 3.0 * 1.001
    # one round more than planned goes over
    assert epsilon([c] * 5, delta=1e-5, accountant=Accountant.RDP) > 3.0


def test_budget_exhaustion_and_persistence_across_processes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    policy = NodePrivacyPolicy(max_epsilon=2.5, ledger=ledger)
    t = _target(target_epsilon=2.0, rounds=3)
    c = t.round_charge(num_examples=500, batch_size=50, epochs=1)
    kw = dict(target=t, charge=c, dataset="d1", federation="f")
    spends = [authorize(policy, run="r1", round=r, **kw) for r in (1, 2, 3)]  # type: ignore[arg-type]
    assert spends[-1].total_after == pytest.approx(spends[-1].run_epsilon)
    assert spends[0].total_after < spends[1].total_after < spends[2].total_after <= 2.002

    # a second federation on the same data: the node's budget (2.5) stops it
    def second_federation() -> None:
        for r in (1, 2, 3):
            authorize(policy, run="r2", round=r, **kw)  # type: ignore[arg-type]

    with pytest.raises(PrivacyBudgetExhausted, match="budget exhausted"):
        second_federation()
    assert len(PrivacyLedger(ledger).history("d1", run="r2")) < 3
    # another process sees the same spend (the ledger is on disk)
    code = (
        "from pathlib import Path; from federator.privacy import PrivacyLedger, Accountant;"
        f"print(PrivacyLedger(Path({str(ledger)!r})).spent('d1', delta=1e-5,"
        " accountant=Accountant.RDP))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(
        PrivacyLedger(ledger).spent("d1", delta=1e-5, accountant=Accountant.RDP)
    )
    assert float(out.stdout) <= 2.5
    # other data is untouched
    assert PrivacyLedger(ledger).history("d2") == []


def test_more_rounds_than_planned_are_refused(tmp_path: Path) -> None:
    policy = NodePrivacyPolicy(max_epsilon=None, ledger=tmp_path / "l.json")
    t = _target(rounds=2)
    c = t.round_charge(num_examples=300, batch_size=30, epochs=1)
    for r in (1, 2):
        authorize(policy, target=t, charge=c, dataset="d", federation="f", run="r", round=r)
    before = (tmp_path / "l.json").read_bytes()
    with pytest.raises(PrivacyBudgetExhausted, match="more rounds than planned"):
        authorize(policy, target=t, charge=c, dataset="d", federation="f", run="r", round=3)
    assert (tmp_path / "l.json").read_bytes() == before


def test_corrupt_ledger_is_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text("{not json")
    policy = NodePrivacyPolicy(max_epsilon=5.0, ledger=path)
    t = _target()
    c = t.round_charge(num_examples=300, batch_size=30, epochs=1)
    with pytest.raises(DataError, match="unreadable"):
        authorize(policy, target=t, charge=c, dataset="d", federation="f", run="r", round=1)
    assert path.read_text() == "{not json"


def test_policy_refusals() -> None:
    with pytest.raises(PolicyRefused, match="requires local DP"):
        refuse_non_private(NodePrivacyPolicy(max_epsilon=1.0))
    refuse_non_private(NodePrivacyPolicy(max_epsilon=None))
    t = _target()
    c = t.round_charge(num_examples=300, batch_size=30, epochs=1)
    with pytest.raises(PolicyRefused, match="ledger"):
        authorize(
            NodePrivacyPolicy(max_epsilon=1.0),
            target=t,
            charge=c,
            dataset="d",
            federation="f",
            run="r",
            round=1,
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_targets(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _target(**kw)


def test_delta_must_be_below_one_over_n() -> None:
    with pytest.raises(ConfigError, match="1/n"):
        _target(delta=0.01).round_charge(num_examples=200, batch_size=10, epochs=1)


def test_batchnorm_and_bad_samplers_are_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="GroupNorm"):
        check_model(model)
    ds = TensorDataset(torch.zeros(20, 2), torch.zeros(20, dtype=torch.long))
    check_loader(DataLoader(ds, batch_size=4, shuffle=True))
    with pytest.raises(ConfigError, match="813"):
        check_loader(DataLoader(ds, batch_size=4, sampler=SubsetRandomSampler(range(10))))
    with pytest.raises(ConfigError, match="drop_last"):
        check_loader(DataLoader(ds, batch_size=3, drop_last=True))
