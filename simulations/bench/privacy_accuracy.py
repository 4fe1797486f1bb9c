"""Benchmark: what local DP-SGD costs in accuracy, against the same federation without it.

``simulations/mnist-cnn.toml`` (5,000 real MNIST digits, 10 clients, Dirichlet α = 0.5, FedAvg)
run through Federator without privacy and with ``[privacy.local]`` at each ε (δ = 1e-5, RDP
accountant unless ``--accountant prv``): every client trains with Opacus DP-SGD (Abadi et
al. 2016) at the noise its own data size needs for ε over all planned rounds. Everything
else is the same config. Each federation runs in a fresh process (fresh Ray). Goal: ε = 8
within 5 accuracy points of the non-private federation.

``--dp-*`` flags change the DP federations only. ``--dp-task mnist-scatter`` trains them on
ScatterNet features (Tramèr & Boneh 2021); that task then also runs once without DP, so the
table shows both what DP costs that model and how it compares with the reference federation
(the bundled ``mnist-cnn`` without DP), which the goal is measured against.

    python -m federator.simulations.bench.privacy_accuracy [--rounds 30] [--epochs 2]
        [--epsilons 1,3,8] [--dp-task T] [--dp-rounds R] [--dp-epochs E] [--dp-lr LR]
        [--dp-batch-size B] [--dp-momentum M] [--max-grad-norm C] [--accountant rdp|prv]
        [--repeats N]

The recipe that meets the goal (docs/benchmarks.md; ``make bench`` runs it)::

    --repeats 3 --dp-task mnist-scatter --dp-rounds 15 --dp-epochs 1 --dp-batch-size 128
    --dp-lr 4 --dp-momentum 0.5 --max-grad-norm 0.25
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from federator.server.plan import FederationPlan, build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import StampDisplay, run_variant

MODULE = "federator.simulations.bench.privacy_accuracy"
REFERENCE = "mnist-cnn"
NON_PRIVATE = "none"
# ``--dp-*`` flag (as its argparse attribute) → the config key it overrides in DP runs only.
DP_OVERRIDES = (
    ("dp_rounds", "federation", "rounds"),
    ("dp_epochs", "training", "epochs"),
    ("dp_lr", "training", "lr"),
    ("dp_batch_size", "training", "batch_size"),
    ("dp_momentum", "training", "momentum"),
)


def _variant(task: str, epsilon: str) -> str:
    """A federation of the table: ``"mnist-cnn:none"``, ``"mnist-scatter:8"``."""
    return f"{task}:{epsilon}"


def _plan(args: argparse.Namespace, variant: str, runs_dir: Path) -> FederationPlan:
    task, _, epsilon = variant.partition(":")
    raw = read_config_file(resolve_config_path(REFERENCE))
    raw["task"]["name"] = task
    raw["federation"]["rounds"] = args.rounds
    raw["training"]["epochs"] = args.epochs
    raw["tracking"] = {"runs_dir": str(runs_dir)}
    if epsilon != NON_PRIVATE:
        raw["privacy"] = {
            "local": {
                "target_epsilon": float(epsilon),
                "delta": args.delta,
                "max_grad_norm": args.max_grad_norm,
                "accountant": args.accountant,
            }
        }
        for attr, section, key in DP_OVERRIDES:
            if (value := getattr(args, attr)) is not None:
                raw[section][key] = value
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
        "rounds": plan.rounds,
        "epochs": plan.training.epochs,
        "refusals": refused,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--epsilons", default="1,3,8", help="comma-separated target ε")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--accountant", default="rdp", choices=("rdp", "prv"))
    parser.add_argument("--dp-task", default=REFERENCE, help="task of the DP federations")
    parser.add_argument("--dp-rounds", type=int, help="rounds of the DP federations only")
    parser.add_argument("--dp-epochs", type=int, help="local epochs of the DP runs only")
    parser.add_argument("--dp-lr", type=float, help="learning rate for the DP runs only")
    parser.add_argument("--dp-batch-size", type=int, help="batch size for the DP runs only")
    parser.add_argument("--dp-momentum", type=float, help="SGD momentum for the DP runs only")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each DP federation (fresh noise each)"
    )
    parser.add_argument("--skip-non-private", action="store_true", help="only the DP federations")
    parser.add_argument("--variant")
    parser.add_argument("--json", type=Path)
    return parser


def main() -> None:
    args = _parser().parse_args()

    if args.variant:  # child process: one federation, result as JSON
        args.json.write_text(json.dumps(_run(args)))
        return

    console = Console()
    reference = _variant(REFERENCE, NON_PRIVATE)
    variants = []
    if not args.skip_non_private:
        variants.append(reference)
        if args.dp_task != REFERENCE:
            variants.append(_variant(args.dp_task, NON_PRIVATE))
    variants += [_variant(args.dp_task, e.strip()) for e in args.epsilons.split(",") if e.strip()]
    passed = _child_args(args)
    results: dict[str, list[dict[str, object]]] = {}
    for v in variants:
        runs = 1 if v.endswith(f":{NON_PRIVATE}") else args.repeats
        for i in range(runs):
            console.print(f"[dim]federation: {_label(v, args.delta)} (run {i + 1} of {runs})…[/]")
            results.setdefault(v, []).append(run_variant(MODULE, v, *passed))
    _report(console, results, args)


def _child_args(args: argparse.Namespace) -> list[str]:
    """The flags a federation's child process needs to build the same plan."""
    passed = [
        "--rounds", str(args.rounds), "--epochs", str(args.epochs),
        "--delta", str(args.delta), "--max-grad-norm", str(args.max_grad_norm),
        "--accountant", args.accountant, "--dp-task", args.dp_task,
    ]  # fmt: skip
    for attr, _, _ in DP_OVERRIDES:
        if (value := getattr(args, attr)) is not None:
            passed += ["--" + attr.replace("_", "-"), str(value)]
    return passed


def _label(variant: str, delta: float) -> str:
    task, _, epsilon = variant.partition(":")
    return f"{task}, no DP" if epsilon == NON_PRIVATE else f"{task}, ε = {epsilon}, δ = {delta:g}"


def _report(
    console: Console, results: dict[str, list[dict[str, object]]], args: argparse.Namespace
) -> None:
    """The table (rich and markdown) and the verdict on the ε = 8 goal (on the mean final
    accuracy of the runs; each run's is shown too)."""

    def finals(v: str) -> list[float]:
        return [float(r["final"]) for r in results.get(v, [])]  # type: ignore[arg-type]

    def final(v: str) -> float:
        return statistics.mean(finals(v)) if v in results else float("nan")

    reference = _variant(REFERENCE, NON_PRIVATE)
    cols = (
        "federation",
        "final accuracy (mean)",
        "each run",
        "best seen",
        f"Δ vs {REFERENCE} no DP (points)",
        "Δ vs same task no DP (points)",
        "max ε spent by a client",
        "σ (min–max over clients)",
        "rounds × epochs",
        "lr",
        "batch",
        "wall time (s)",
    )
    rows = []
    for v, runs in results.items():
        r = runs[0]
        task, _, epsilon = v.partition(":")
        private = epsilon != NON_PRIVATE
        sigmas = [float(s) for s in r["sigmas"]]  # type: ignore[attr-defined]
        same = _variant(task, NON_PRIVATE)
        rows.append(
            (
                _label(v, args.delta),
                f"{final(v):.4f}",
                ", ".join(f"{f:.3f}" for f in finals(v)),
                f"{max(float(x['best']) for x in runs):.4f}",  # type: ignore[arg-type]
                "–" if v == reference else f"{100 * (final(v) - final(reference)):+.1f}",
                f"{100 * (final(v) - final(same)):+.1f}" if private else "–",
                f"{max(float(x['max_epsilon_spent']) for x in runs):.3f}"  # type: ignore[arg-type]
                if private
                else "–",
                f"{min(sigmas):.2f}–{max(sigmas):.2f}" if sigmas else "–",
                f"{r['rounds']} × {r['epochs']}",
                f"{float(r['lr']):g}",  # type: ignore[arg-type]
                str(r["batch"]),
                f"{statistics.mean(float(x['wall']) for x in runs):.0f}",  # type: ignore[arg-type]
            )
        )
    table = Table(
        title=f"Privacy vs accuracy: MNIST, 10 clients, clip {args.max_grad_norm}, "
        f"{args.accountant} accountant",
        title_justify="left",
    )
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        "markdown:\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols),
        highlight=False,
        soft_wrap=True,
    )
    for row in rows:
        console.print("| " + " | ".join(row) + " |", highlight=False, soft_wrap=True)
    refusals = {v: sum(int(r["refusals"]) for r in runs) for v, runs in results.items()}  # type: ignore[call-overload]
    refusals = {v: n for v, n in refusals.items() if n}
    if refusals:
        console.print(f"[yellow]refused or failed replies: {refusals}[/]")
    eight = next((v for v in results if v.partition(":")[2] in ("8", "8.0")), None)
    if reference in results and eight:
        gap = 100 * (final(reference) - final(eight))
        verdict = "met" if gap <= 5 else "NOT met"
        console.print(
            f"goal: ε = 8 ({eight.partition(':')[0]}) within 5 points of {REFERENCE} "
            f"without DP → {verdict} ({gap:.1f} points)"
        )


if __name__ == "__main__":
    main()
