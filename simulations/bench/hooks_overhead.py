"""Benchmark: what Federator's hooks cost per round, against bare Flower doing the same work.

Both variants run the same task on the same partitions on Flower's Simulation Engine, each in
a fresh process, alternating (bare, federator, bare, federator, ...) so drift hits both:

* bare Flower — ``FedAvg.start`` and a plain ClientApp: train + evaluate messages, nothing else;
* Federator — every hook on: reply screening, server-side evaluation on the hold-out, the gate,
  MLflow (run, metrics, a model version with pt2 export + safetensors per round), progress.

Reported: the median round wall time without round 1 (Ray start-up), and the ratio; beside it
the whole federation's wall time, the final drain of MLflow writes and exports included; then
the ratio of mean round times with a 95 % bootstrap interval (`ratio_interval`). Goal: ratio
≤ 1.05, judged met only when the whole interval lies below it.

A second table runs each bundled config (``simulations/*.toml``) once as shipped and reports
its durability: how far the committed checkpoints ran behind the rounds (lag in rounds and
seconds, median and worst), how often the round loop waited for MLflow, and the drain.

    python -m federator.simulations.bench.hooks_overhead [--rounds 20] [--repeats 3]
        [--configs demo mnist-cnn ...]   (--configs with no name: skip the second table)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console

from federator.server.federation.exchange import SIMULATION_POLL
from federator.server.plan import (
    FederationPlan,
    build_plan,
    read_config_file,
    resolve_config_path,
)
from federator.simulations.bench._common import (
    StampDisplay,
    bare_flower_apps,
    print_table,
    ratio_interval,
    round_times,
    run_variant,
    steady,
)
from federator.simulations.bench._cpu import ROLES, CpuStamps, per_round

MODULE = "federator.simulations.bench.hooks_overhead"
BUNDLED = ("demo", "digits-robust", "mnist-cnn", "mnist-dp")
GOAL = 1.05


def _plan(rounds: int, runs_dir: Path) -> FederationPlan:
    """The utility benchmark's federation (simulations/mnist-cnn.toml), fewer rounds."""
    raw = read_config_file(resolve_config_path("mnist-cnn"))
    raw["federation"]["rounds"] = rounds
    raw["tracking"] = {"runs_dir": str(runs_dir)}
    return build_plan(raw, source="hooks-overhead benchmark")


def _bare(plan: FederationPlan) -> dict[str, object]:
    from flwr.simulation import run_simulation

    from federator.server.federation.app import simulation_dispatch

    stamps = CpuStamps()
    # Both variants pull replies as often (Federator's simulation poll) and get their
    # messages dispatched as often (Federator's simulation dispatch, 0.01 s): a round's time
    # is then not rounded up to Flower's 0.1 s steps, differently in each variant.
    server, client = bare_flower_apps(plan, stamps, poll=SIMULATION_POLL)
    t0 = time.monotonic()
    with simulation_dispatch():
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=plan.data.clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    return {
        "round_times": round_times(stamps),
        "total": time.monotonic() - t0,
        "cpu": per_round(stamps.cpu),
    }


def _federator(plan: FederationPlan) -> dict[str, object]:
    from federator.simulations.runner import simulate

    display = StampDisplay()
    t0 = time.monotonic()
    simulate(plan, display=display)
    drain = time.monotonic() - (display.finished or t0)
    durability = display.result.durability if display.result else None
    return {
        "round_times": round_times(display.stamps),
        "total": time.monotonic() - t0,
        "cpu": per_round(display.stamps.cpu),
        "drain": drain,
        "durability": asdict(durability) if durability else None,
    }


def _bundled(name: str, runs_dir: Path) -> FederationPlan:
    raw = read_config_file(resolve_config_path(name))
    raw["tracking"] = {"runs_dir": str(runs_dir)}
    return build_plan(raw, source=f"bundled {name}")


def _durability_table(console: Console, configs: list[str]) -> None:
    header = (
        "config",
        "rounds",
        "whole run (s)",
        "drain (s)",
        "lag rounds median / worst",
        "lag s median / worst",
        "waits for MLflow",
    )
    rows = []
    for name in configs:
        console.print(f"[dim]durability: {name}…[/]")
        r = run_variant(MODULE, "config", "--config", name)
        d: dict[str, float] = r["durability"]  # type: ignore[assignment]
        rows.append(
            (
                name,
                str(int(d["saved_through"])),
                f"{float(r['total']):.1f}",  # type: ignore[arg-type]
                f"{float(r['drain']):.1f}",  # type: ignore[arg-type]
                f"{d['lag_rounds_median']:g} / {int(d['lag_rounds_worst'])}",
                f"{d['lag_seconds_median']:.2f} / {d['lag_seconds_worst']:.2f}",
                f"{int(d['waits'])} ({d['waited_seconds']:.1f} s)",
            )
        )
    title = "Durability of the bundled configs (one run each, as shipped)"
    print_table(console, title=title, header=header, rows=rows)


def _cpu_table(console: Console, runs: dict[str, list[dict[str, object]]]) -> None:
    """CPU seconds per round (rounds 2–N) by role, median over the runs of each variant."""
    rows = []
    for variant, key in (("bare Flower 1.42", "bare"), ("Federator, all hooks", "federator")):
        cpu: list[dict[str, float]] = [r["cpu"] for r in runs[key]]  # type: ignore[misc]
        med = {role: statistics.median(c[role] for c in cpu) for role in ROLES}
        total = statistics.median(sum(c.values()) for c in cpu)
        rows.append((variant, *(f"{med[role]:.3f}" for role in ROLES), f"{total:.3f}"))
    title = "CPU seconds per round by role (rounds 2–N, median over runs; 2 cores = 2 s/s)"
    print_table(console, title=title, header=("variant", *ROLES, "all"), rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="*", default=list(BUNDLED))
    parser.add_argument("--variant", choices=["bare", "federator", "config"])
    parser.add_argument("--config")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.variant:  # child process: one variant, result as JSON
        with tempfile.TemporaryDirectory() as tmp:
            if args.variant == "config":
                result = _federator(_bundled(args.config, Path(tmp)))
            else:
                plan = _plan(args.rounds, Path(tmp))
                result = _bare(plan) if args.variant == "bare" else _federator(plan)
        args.json.write_text(json.dumps(result))
        return

    console = Console()
    runs: dict[str, list[dict[str, object]]] = {"bare": [], "federator": []}
    for i in range(args.repeats):
        for variant in ("bare", "federator"):
            console.print(f"[dim]run {i + 1}/{args.repeats}: {variant}…[/]")
            runs[variant].append(run_variant(MODULE, variant, "--rounds", str(args.rounds)))

    def med(variant: str) -> float:
        return statistics.median(steady(r["round_times"]) for r in runs[variant])  # type: ignore[arg-type]

    bare = med("bare")
    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(args.rounds, Path(tmp))
    d = plan.data
    header = (
        "variant",
        "median round wall time (s)",
        "per-run medians (s)",
        "ratio",
        "whole run incl. drain (s), median",
        "whole-run ratio",
    )
    totals = {k: statistics.median(float(r["total"]) for r in v) for k, v in runs.items()}  # type: ignore[arg-type]
    rows = []
    for variant, key in (("bare Flower 1.42", "bare"), ("Federator, all hooks", "federator")):
        value = med(key)
        per_run = ", ".join(f"{steady(r['round_times']):.3f}" for r in runs[key])  # type: ignore[arg-type]
        rows.append(
            (
                variant,
                f"{value:.3f}",
                per_run,
                f"{value / bare:.3f}",
                f"{totals[key]:.1f}",
                f"{totals[key] / totals['bare']:.3f}",
            )
        )
    title = (
        f"Hooks overhead: {plan.task_ref}, {d.clients} clients ({d.partitioner.value}), "
        f"{plan.training.epochs} local epoch(s), {args.rounds} rounds, {args.repeats} runs each"
    )
    print_table(console, title=title, header=header, rows=rows)
    drains = [float(r["drain"]) for r in runs["federator"]]  # type: ignore[arg-type]
    lags = [r["durability"] for r in runs["federator"]]
    worst = max(int(lag["lag_rounds_worst"]) for lag in lags)  # type: ignore[index]

    def steady_rounds(variant: str) -> list[list[float]]:
        return [list(r["round_times"])[1:] for r in runs[variant]]  # type: ignore[call-overload]

    point, lo, hi = ratio_interval(
        steady_rounds("bare"), steady_rounds("federator"), rng=np.random.default_rng(0)
    )
    verdict = "met" if hi <= GOAL else "NOT met" if lo > GOAL else "not decided"
    console.print(
        f"ratio of mean round times {point:.3f}, 95 % interval {lo:.3f}–{hi:.3f} "
        f"(hierarchical bootstrap over {args.repeats} runs × {args.rounds - 1} rounds each)\n"
        f"goal: ratio ≤ {GOAL} → {verdict}"
        + (" (the interval spans the goal: run more --repeats)" if verdict == "not decided" else "")
        + f"; MLflow writes left after the last round took {statistics.median(drains):.1f} s "
        f"to drain (median); worst commit lag {worst} round(s)"
    )
    _cpu_table(console, runs)
    if args.configs:
        _durability_table(console, args.configs)


if __name__ == "__main__":
    main()
