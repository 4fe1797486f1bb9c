"""Benchmark: what local DP-SGD costs in accuracy, against the same federation without it.

``simulations/mnist-cnn.toml`` (5,000 real MNIST digits, 10 clients, Dirichlet α = 0.5, FedAvg)
run through Federator without privacy and with ``[privacy.local]`` at each ε (δ = 1e-5, RDP
accountant): every client trains with Opacus DP-SGD (Abadi et al. 2016) at the noise its own
data size needs for ε over all planned rounds. Everything else is the same config. Each
federation runs in a fresh process (fresh Ray). Goal: ε = 8 within 5 accuracy points of the
non-private federation.

    python -m federator.simulations.bench.privacy_accuracy [--rounds 30] [--epochs 2]
        [--epsilons 1,3,8] [--dp-lr LR] [--dp-batch-size B] [--dp-momentum M]
        [--max-grad-norm C]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from federator.server.plan import FederationPlan, build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import StampDisplay, run_variant

MODULE = "federator.simulations.bench.privacy_accuracy"
NON_PRIVATE = "none"


def _plan(args: argparse.Namespace, variant: str, runs_dir: Path) -> FederationPlan:
    raw = read_config_file(resolve_config_path("mnist-cnn"))
    raw["federation"]["rounds"] = args.rounds
    raw["training"]["epochs"] = args.epochs
    raw["tracking"] = {"runs_dir": str(runs_dir)}
    if variant != NON_PRIVATE:
        raw["privacy"] = {
            "local": {
                "target_epsilon": float(variant),
                "delta": args.delta,
                "max_grad_norm": args.max_grad_norm,
                "accountant": "rdp",
            }
        }
        if args.dp_lr is not None:
            raw["training"]["lr"] = args.dp_lr
        if args.dp_batch_size is not None:
            raw["training"]["batch_size"] = args.dp_batch_size
        if args.dp_momentum is not None:
            raw["training"]["momentum"] = args.dp_momentum
    return build_plan(raw, source="privacy-accuracy benchmark")


def _run(args: argparse.Namespace) -> dict[str, object]:
    """One federation (child process): accuracies, wall time and the ε the clients spent."""
    from federator.simulations.runner import simulate

    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(args, args.variant, Path(tmp))
        t0 = time.monotonic()
        summary = simulate(plan, display=StampDisplay())
        wall = time.monotonic() - t0
    evals = [o.server_eval.accuracy for o in summary.outcomes if o.server_eval is not None]
    spent = [
        c.metrics["dp-epsilon-total"]
        for o in summary.outcomes
        for c in o.train_clients
        if "dp-epsilon-total" in c.metrics
    ]
    sigmas = [
        c.metrics["dp-noise-multiplier"]
        for c in summary.outcomes[-1].train_clients
        if "dp-noise-multiplier" in c.metrics
    ]
    refused = sum(len(o.refusals) for o in summary.outcomes)
    return {
        "final": evals[-1] if evals else float("nan"),
        "best": max(evals) if evals else float("nan"),
        "wall": wall,
        "max_epsilon_spent": max(spent) if spent else 0.0,
        "sigmas": sigmas,
        "lr": plan.training.lr,
        "batch": plan.training.batch_size,
        "refusals": refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--epsilons", default="1,3,8", help="comma-separated target ε")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--dp-lr", type=float, help="learning rate for the DP runs only")
    parser.add_argument("--dp-batch-size", type=int, help="batch size for the DP runs only")
    parser.add_argument("--dp-momentum", type=float, help="SGD momentum for the DP runs only")
    parser.add_argument("--skip-non-private", action="store_true", help="only the DP federations")
    parser.add_argument("--variant")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.variant:  # child process: one federation, result as JSON
        args.json.write_text(json.dumps(_run(args)))
        return

    console = Console()
    variants = [] if args.skip_non_private else [NON_PRIVATE]
    variants += [e.strip() for e in args.epsilons.split(",") if e.strip()]
    passed = [
        "--rounds", str(args.rounds), "--epochs", str(args.epochs),
        "--delta", str(args.delta), "--max-grad-norm", str(args.max_grad_norm),
    ]  # fmt: skip
    for flag, value in (
        ("--dp-lr", args.dp_lr),
        ("--dp-batch-size", args.dp_batch_size),
        ("--dp-momentum", args.dp_momentum),
    ):
        if value is not None:
            passed += [flag, str(value)]
    results: dict[str, dict[str, object]] = {}
    for v in variants:
        console.print(f"[dim]federation: {'no DP' if v == NON_PRIVATE else f'ε = {v}'}…[/]")
        results[v] = run_variant(MODULE, v, *passed)

    base = results.get(NON_PRIVATE)
    base_acc = float(base["final"]) if base else float("nan")  # type: ignore[arg-type]
    cols = (
        "federation",
        "final accuracy",
        "best seen",
        "Δ vs non-private (points)",
        "max ε spent by a client",
        "σ (min–max over clients)",
        "lr",
        "batch",
        "wall time (s)",
    )
    rows = []
    for v, r in results.items():
        final = float(r["final"])  # type: ignore[arg-type]
        sigmas = [float(s) for s in r["sigmas"]]  # type: ignore[attr-defined]
        rows.append(
            (
                "no DP" if v == NON_PRIVATE else f"local DP ε = {v}, δ = {args.delta:g}",
                f"{final:.4f}",
                f"{float(r['best']):.4f}",  # type: ignore[arg-type]
                "–" if v == NON_PRIVATE or base is None else f"{100 * (final - base_acc):+.1f}",
                "–" if v == NON_PRIVATE else f"{float(r['max_epsilon_spent']):.3f}",  # type: ignore[arg-type]
                f"{min(sigmas):.2f}–{max(sigmas):.2f}" if sigmas else "–",
                f"{float(r['lr']):g}",  # type: ignore[arg-type]
                str(r["batch"]),
                f"{float(r['wall']):.0f}",  # type: ignore[arg-type]
            )
        )
    table = Table(
        title=f"Privacy vs accuracy: mnist-cnn, 10 clients, {args.rounds} rounds, "
        f"{args.epochs} local epoch(s), clip {args.max_grad_norm}",
        title_justify="left",
    )
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("markdown:\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        console.print("| " + " | ".join(row) + " |", highlight=False, soft_wrap=True)
    refusals = {v: r["refusals"] for v, r in results.items() if r["refusals"]}
    if refusals:
        console.print(f"[yellow]refused or failed replies: {refusals}[/]")
    eight = results.get("8") or results.get("8.0")
    if base and eight:
        gap = 100 * (base_acc - float(eight["final"]))  # type: ignore[arg-type]
        verdict = "met" if gap <= 5 else "NOT met"
        console.print(f"goal: ε = 8 within 5 points of non-private → {verdict} ({gap:.1f} points)")


if __name__ == "__main__":
    main()
