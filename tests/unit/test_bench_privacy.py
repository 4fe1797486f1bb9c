"""The privacy benchmark changes training settings for its DP runs only."""

from __future__ import annotations

import argparse
from pathlib import Path

from federator.simulations.bench.privacy_accuracy import NON_PRIVATE, _plan


def _args(**dp: float | None) -> argparse.Namespace:
    return argparse.Namespace(
        rounds=3,
        epochs=1,
        delta=1e-5,
        max_grad_norm=1.0,
        dp_lr=dp.get("lr"),
        dp_batch_size=dp.get("batch"),
        dp_momentum=dp.get("momentum"),
    )


def test_dp_settings_apply_to_the_dp_runs_only(tmp_path: Path) -> None:
    args = _args(lr=0.5, batch=128, momentum=0.5)
    plain = _plan(args, NON_PRIVATE, tmp_path)
    private = _plan(args, "8", tmp_path)
    assert (plain.training.lr, plain.training.batch_size, plain.training.momentum) == (
        0.05,
        32,
        0.9,
    )  # simulations/mnist-cnn.toml
    assert (private.training.lr, private.training.batch_size, private.training.momentum) == (
        0.5,
        128,
        0.5,
    )
    assert plain.rounds == private.rounds == 3


def test_without_dp_flags_both_runs_train_alike(tmp_path: Path) -> None:
    plain, private = _plan(_args(), NON_PRIVATE, tmp_path), _plan(_args(), "3", tmp_path)
    assert plain.training == private.training
