"""Benchmark: how close federated training gets to centralized training on the same data.

Federated: ``simulations/mnist-cnn.toml`` — 5,000 real MNIST digits, 10 clients with a
Dirichlet(α = 0.5) label split, FedAvg, 2 local epochs, 30 rounds — run through Federator
(every hook on). Centralized: the same CNN, optimiser and batch size trained on the union of
the clients' training splits, evaluated on the same server hold-out. Goal: federated accuracy
÷ centralized accuracy ≥ 0.97.

    python -m federator.simulations.bench.utility [--rounds 30] [--central-epochs 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from federator.server.plan import FederationPlan, build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import StampDisplay
from federator.simulations.datasets import ArrayData
from federator.simulations.partition import client_data, server_holdout


def _plan(rounds: int, runs_dir: Path) -> FederationPlan:
    raw = read_config_file(resolve_config_path("mnist-cnn"))
    raw["federation"]["rounds"] = rounds
    raw["tracking"] = {"runs_dir": str(runs_dir)}
    return build_plan(raw, source="utility benchmark")


def centralized(plan: FederationPlan, epochs: int, lr: float) -> tuple[float, float, float]:
    """Train on the pooled client training data; (final accuracy, best accuracy, seconds)."""
    parts = [client_data(plan.data, i).train for i in range(plan.data.clients)]
    pooled = ArrayData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    holdout = server_holdout(plan.data)
    task = plan.task()
    torch.manual_seed(plan.seed)
    model = task.build_model()
    optimizer_settings = {**plan.training.__dict__, "epochs": epochs, "lr": lr}
    accs = []
    t0 = time.monotonic()
    for epoch in range(epochs):
        settings = plan.training.__class__(
            **{**optimizer_settings, "epochs": 1, "seed": plan.seed + epoch}
        )
        task.train(model, pooled, settings)
        accs.append(task.evaluate(model, holdout).accuracy)
    return accs[-1], max(accs), time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--central-epochs", type=int, default=20)
    parser.add_argument(
        "--central-only",
        action="store_true",
        help="skip the federation (check the centralized reference)",
    )
    args = parser.parse_args()
    console = Console()

    from federator.simulations.runner import simulate

    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(args.rounds, Path(tmp))
        fed: list[tuple[str, float, float, float]] = []
        if not args.central_only:
            console.print(f"[dim]federated: {plan.data.clients} clients, {args.rounds} rounds…[/]")
            t0 = time.monotonic()
            summary = simulate(plan, display=StampDisplay())
            fed_time = time.monotonic() - t0
            done = [o.server_eval for o in summary.outcomes if o.server_eval is not None]
            by_round = {o.round: o.server_eval for o in summary.outcomes if o.server_eval}
            champ = by_round.get(summary.champion_round or -1)
            fed = [
                (
                    f"Federator FedAvg, final round {args.rounds}",
                    done[-1].accuracy,
                    max(e.accuracy for e in done),
                    fed_time,
                )
            ]
            if champ is not None:
                fed.append(
                    (
                        f"Federator champion (round {summary.champion_round})",
                        champ.accuracy,
                        champ.accuracy,
                        fed_time,
                    )
                )

    # The reference must be a good centralized model: the clients' learning rate can be too
    # high for one model seeing all the data, so try it and two smaller ones, keep the best.
    central = []
    for lr in (plan.training.lr, plan.training.lr / 5, plan.training.lr / 25):
        console.print(f"[dim]centralized: {args.central_epochs} epochs, lr {lr:g}…[/]")
        central.append((lr, *centralized(plan, args.central_epochs, lr)))
    ref_lr, cen_final, _, _ = max(central, key=lambda c: c[1])

    rows = [
        (
            f"centralized, lr {lr:g}{' (reference)' if lr == ref_lr else ''}",
            final,
            best,
            secs,
            final / cen_final,
        )
        for lr, final, best, secs in central
    ]
    rows += [(name, final, best, secs, final / cen_final) for name, final, best, secs in fed]
    d = plan.data
    table = Table(
        title=f"Utility: {plan.task_ref}, {d.clients} clients, Dirichlet α={d.alpha}, "
        f"hold-out {len(server_holdout(d))} examples",
        title_justify="left",
    )
    for col in ("model", "hold-out accuracy", "best seen", "wall time (s)", "÷ centralized"):
        table.add_column(col)
    for name, final, best, secs, ratio in rows:
        table.add_row(name, f"{final:.4f}", f"{best:.4f}", f"{secs:.0f}", f"{ratio:.3f}")
    console.print(table)
    console.print(
        "markdown:\n| model | hold-out accuracy | best seen | wall time (s) | "
        "÷ centralized |\n|---|---|---|---|---|"
    )
    for name, final, best, secs, ratio in rows:
        console.print(
            f"| {name} | {final:.4f} | {best:.4f} | {secs:.0f} | {ratio:.3f} |",
            highlight=False,
            soft_wrap=True,
        )
    if fed:
        ratio = fed[0][1] / cen_final
        console.print(
            f"goal: federated ÷ centralized ≥ 0.97 → "
            f"{'met' if ratio >= 0.97 else 'NOT met'} ({ratio:.3f})"
        )


if __name__ == "__main__":
    main()
