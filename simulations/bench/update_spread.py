"""Benchmark: how far apart honest clients' updates are — what the norm rule's bound must clear.

Update screening (`federator.strategies.update_rules`) rejects an update whose norm is more
than ``max_norm_ratio`` × the round's median (5 by default). That bound is only safe if honest
clients stay well below it, also on non-IID data. Each bundled config runs as shipped (rounds
capped by ``--rounds``), every hook on, and each round reports its spread: the largest update
norm ÷ the median (MLflow's ``train/update-norm-spread``). Printed: per config, the median and
worst round, how many honest updates the default bound rejected, and the margin (bound ÷ worst).

    python -m federator.simulations.bench.update_spread [--rounds 12] [--configs demo ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from rich.console import Console

from federator.server.plan import build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import StampDisplay, print_table
from federator.strategies.update_rules import UpdateRules

BUNDLED = ("demo", "digits-robust", "mnist-cnn", "mnist-dp")


def spread_of(name: str, rounds: int) -> tuple[list[float], int]:
    """The per-round spreads of config ``name`` and how many updates were refused."""
    from federator.simulations.runner import simulate

    raw = read_config_file(resolve_config_path(name))
    raw["federation"]["rounds"] = min(rounds, raw["federation"]["rounds"])
    raw["tracking"] = {"runs_dir": tempfile.mkdtemp(prefix="federator-spread-")}
    summary = simulate(build_plan(raw, source=name), display=StampDisplay())
    spreads = [
        o.train_metrics["update-norm-spread"]
        for o in summary.outcomes
        if "update-norm-spread" in o.train_metrics
    ]
    refused = sum(1 for o in summary.outcomes for r in o.refusals if "update norm" in r.reason)
    return spreads, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--configs", nargs="*", default=list(BUNDLED))
    args = parser.parse_args()
    bound = UpdateRules().max_norm_ratio
    assert bound is not None
    rows = []
    for name in args.configs:
        spreads, refused = spread_of(name, args.rounds)
        worst = max(spreads)
        rows.append(
            [
                name,
                str(len(spreads)),
                f"{statistics.median(spreads):.2f}",
                f"{worst:.2f}",
                str(refused),
                f"{bound / worst:.1f}×",
            ]
        )
    print_table(
        Console(),
        title=f"Update-norm spread (max ÷ median per round); default bound {bound:g}×",
        header=["config", "rounds", "median spread", "worst round", "refused", "margin"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
