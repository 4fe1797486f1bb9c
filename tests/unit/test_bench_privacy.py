"""The privacy benchmark changes the task and training settings for its DP runs only."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from federator.simulations.bench.privacy_accuracy import (
    _child_args,
    _parser,
    _plan,
    _report,
    _variant,
)

REFERENCE = _variant("mnist-cnn", "none")


def _args(**dp: float | str | None) -> argparse.Namespace:
    return argparse.Namespace(
        rounds=3,
        epochs=2,
        delta=1e-5,
        max_grad_norm=0.25,
        accountant=dp.get("accountant", "rdp"),
        dp_rounds=dp.get("rounds"),
        dp_epochs=dp.get("epochs"),
        dp_lr=dp.get("lr"),
        dp_batch_size=dp.get("batch"),
        dp_momentum=dp.get("momentum"),
    )


def test_dp_settings_apply_to_the_dp_runs_only(tmp_path: Path) -> None:
    args = _args(lr=4.0, batch=128, momentum=0.5, rounds=2, epochs=1, accountant="prv")
    plain = _plan(args, REFERENCE, tmp_path)
    plain_scatter = _plan(args, _variant("mnist-scatter", "none"), tmp_path)
    private = _plan(args, _variant("mnist-scatter", "8"), tmp_path)
    bundled = (0.05, 32, 0.9, 2)  # simulations/mnist-cnn.toml, epochs from --epochs
    for run in (plain, plain_scatter):
        assert (run.training.lr, run.training.batch_size, run.training.momentum) == bundled[:3]
        assert (run.training.epochs, run.rounds, run.privacy.local) == (2, 3, None)
    assert (private.training.lr, private.training.batch_size, private.training.momentum) == (
        4.0,
        128,
        0.5,
    )
    assert (private.training.epochs, private.rounds) == (1, 2)
    assert private.privacy.local is not None
    assert (private.privacy.local.target_epsilon, private.privacy.local.max_grad_norm) == (
        8.0,
        0.25,
    )
    assert private.privacy.local.accountant == "prv"
    assert (plain.task_ref, plain_scatter.task_ref, private.task_ref) == (
        "mnist-cnn",
        "mnist-scatter",
        "mnist-scatter",
    )


def test_without_dp_flags_both_runs_train_alike(tmp_path: Path) -> None:
    plain = _plan(_args(), REFERENCE, tmp_path)
    private = _plan(_args(), _variant("mnist-cnn", "3"), tmp_path)
    assert plain.training == private.training
    assert plain.rounds == private.rounds


def _result(final: float, *, eps: float = 0.0) -> dict[str, object]:
    return {
        "final": final,
        "best": final + 0.01,
        "wall": 10.0,
        "max_epsilon_spent": eps,
        "sigmas": [1.4, 2.0] if eps else [],
        "lr": 4.0,
        "batch": 128,
        "rounds": 15,
        "epochs": 1,
        "refusals": 0,
    }


def test_the_verdict_uses_the_mean_of_the_runs_against_the_reference() -> None:
    results = {
        REFERENCE: [_result(0.977)],
        _variant("mnist-scatter", "none"): [_result(0.973)],
        _variant("mnist-scatter", "8"): [_result(0.94, eps=7.99), _result(0.92, eps=7.98)],
    }
    console = Console(record=True, width=400)
    _report(console, results, _args(accountant="rdp"))
    text = console.export_text()
    assert (
        "| mnist-scatter, ε = 8, δ = 1e-05 | 0.9300 | 0.940, 0.920 | 0.9500 | -4.7 | -4.3 |" in text
    )
    assert "→ met (4.7 points)" in text
    results[_variant("mnist-scatter", "8")].append(_result(0.85, eps=7.99))
    console = Console(record=True, width=400)
    _report(console, results, _args(accountant="rdp"))
    assert "→ NOT met (7.4 points)" in console.export_text()


def test_a_child_process_builds_the_plans_its_parent_asked_for(tmp_path: Path) -> None:
    """The parent forwards its flags; every DP-only setting reaches the child's plan."""
    recipe = ["--dp-task", "mnist-scatter", "--dp-rounds", "15", "--dp-epochs", "1"]
    recipe += ["--dp-batch-size", "128", "--dp-lr", "4", "--dp-momentum", "0.5"]
    recipe += ["--max-grad-norm", "0.25", "--accountant", "prv", "--rounds", "20"]
    parent = _parser().parse_args(recipe)
    child = _parser().parse_args(["--variant", "x", "--json", "x", *_child_args(parent)])
    for variant in (REFERENCE, _variant("mnist-scatter", "8")):
        ours, theirs = _plan(parent, variant, tmp_path), _plan(child, variant, tmp_path)
        assert (ours.task_ref, ours.rounds, ours.training) == (
            theirs.task_ref,
            theirs.rounds,
            theirs.training,
        )
        assert ours.privacy == theirs.privacy
    private = _plan(child, _variant("mnist-scatter", "8"), tmp_path)
    assert (private.rounds, private.training.batch_size, private.training.lr) == (15, 128, 4.0)
    assert _plan(child, REFERENCE, tmp_path).rounds == 20
