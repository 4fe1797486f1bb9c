"""Benchmark: robustness — each attack against each defence, accuracy against the clean run.

Two bundled tasks (``digits-mlp`` from the ``demo`` config, ``mnist-cnn`` from its own), 10
clients, 20 % of them attackers (``[attack] fraction = 0.2``: 2 clients, the same two for
every attack, drawn from the federation seed). Every attack of `federator.simulations.attacks`
— and none, for the clean baselines — meets every defence: FedAvg, the coordinate-wise median,
the trimmed mean (β = 0.2), Krum and Multi-Krum (f = 2; Multi-Krum averages n − f = 8), each
with update screening off, and FedAvg with the default screening (norm ratio 5× the round's
median). Each cell is one ``federator simulate`` run, every hook on; client-side evaluation is
off (``fraction_evaluate = 0``; the gate judges the server hold-out, so its client-spread limit
is dropped). Printed, per task:

* the final global model's accuracy on the server hold-out, and Δ against clean FedAvg;
* the best defence per attack, and whether it is within 3 points of clean FedAvg;
* FedAvg's champions: the round whose model the gate promoted last, its accuracy, and whether
  attackers' updates went into it.

    python -m federator.simulations.bench.robustness [--quick] [--models digits-mlp mnist-cnn]
        [--digits-rounds 20] [--mnist-rounds 8] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from federator.server.federation.events import FederationSummary, RoundStatus
from federator.server.plan import build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import StampDisplay, print_table

FRACTION = 0.2
CLIENTS = 10
ATTACKERS = round(FRACTION * CLIENTS)
GOAL_POINTS = 3.0
CLEAN = "none"

# Row name → the [attack] section (None: the clean run). Parameters are the defaults.
ATTACKS: dict[str, dict[str, Any] | None] = {
    CLEAN: None,
    "sign-flip": {"kind": "sign-flip"},
    "scale": {"kind": "scale"},
    "gaussian": {"kind": "gaussian"},
    "little-is-enough": {"kind": "little-is-enough"},
    "label-flip": {"kind": "label-flip"},
}


@dataclass(frozen=True)
class Defence:
    """A table column: a strategy with its parameters, screening on or off."""

    column: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    screening: bool = False


DEFENCES = (
    Defence("fedavg", "fedavg"),
    Defence("fedmedian", "fedmedian"),
    Defence("fedtrimmedavg", "fedtrimmedavg", {"beta": 0.2}),
    Defence("krum", "krum", {"num_malicious_nodes": ATTACKERS}),
    Defence(
        "multikrum",
        "multikrum",
        {"num_malicious_nodes": ATTACKERS, "num_nodes_to_select": CLIENTS - ATTACKERS},
    ),
    Defence("fedavg+screening", "fedavg", screening=True),
)
FEDAVG, SCREENED = DEFENCES[0].column, DEFENCES[-1].column

# Task → (bundled config it starts from, default rounds).
MODELS = {"digits-mlp": ("demo", 20), "mnist-cnn": ("mnist-cnn", 8)}


@dataclass(frozen=True)
class Cell:
    """One run's result: final hold-out accuracy and what the gate made champion."""

    accuracy: float
    champion_round: int | None
    champion_accuracy: float | None
    champion_attacked: bool  # attackers' updates passed screening into the champion
    seconds: float


def cell_from(summary: FederationSummary, seconds: float) -> Cell:
    """The `Cell` of a finished federation."""
    done = [o for o in summary.outcomes if o.status is RoundStatus.COMPLETED and o.server_eval]
    if not done:
        raise ValueError("the federation completed no round")
    last = done[-1].server_eval
    assert last is not None
    champ = next((o for o in done if o.round == summary.champion_round), None)
    return Cell(
        accuracy=last.accuracy,
        champion_round=champ.round if champ else None,
        champion_accuracy=champ.server_eval.accuracy if champ and champ.server_eval else None,
        champion_attacked=bool(champ and champ.attackers_accepted),
        seconds=seconds,
    )


def config_for(
    model: str, attack: str, defence: Defence, *, rounds: int, runs_dir: Path
) -> dict[str, Any]:
    """The raw config of one cell: the task's bundled config, changed as the docstring says."""
    raw = copy.deepcopy(read_config_file(resolve_config_path(MODELS[model][0])))
    raw["federation"]["name"] = f"robust-{model}-{attack}-{defence.column.replace('+', '-')}"
    raw["federation"]["rounds"] = rounds
    raw["data"]["clients"] = CLIENTS
    raw["strategy"] = {
        "name": defence.strategy,
        "fraction_evaluate": 0.0,
        "params": dict(defence.params),
    }
    raw["gate"].pop("max_client_spread", None)
    raw["tracking"] = {"runs_dir": str(runs_dir), "export_flavour": False}
    if not defence.screening:
        raw["screening"] = {"max_norm_ratio": False}
    section = ATTACKS[attack]
    if section is not None:
        raw["attack"] = {**section, "fraction": FRACTION}
    return raw


def run_cell(raw: dict[str, Any]) -> Cell:
    """Simulate one cell (in this process, on Flower's Simulation Engine)."""
    from federator.simulations.runner import simulate

    t0 = time.monotonic()
    summary = simulate(build_plan(raw, source=raw["federation"]["name"]), display=StampDisplay())
    return cell_from(summary, time.monotonic() - t0)


Grid = Mapping[str, Mapping[str, Cell]]  # attack → defence column → cell


def _delta(value: float, clean: float) -> str:
    return f"{value:.3f} ({(value - clean) * 100:+.1f})"


def accuracy_rows(grid: Grid, columns: Sequence[str]) -> list[list[str]]:
    """Rows attack × columns: accuracy (Δ points vs clean FedAvg); missing cells are –."""
    clean = grid[CLEAN][FEDAVG].accuracy
    return [
        [attack, *(_delta(cells[c].accuracy, clean) if c in cells else "–" for c in columns)]
        for attack, cells in grid.items()
    ]


def best_defence(cells: Mapping[str, Cell]) -> tuple[str, float] | None:
    """The defence (not plain FedAvg) with the best final accuracy, and that accuracy."""
    ranked = [(c.accuracy, name) for name, c in cells.items() if name != FEDAVG]
    if not ranked:
        return None
    accuracy, name = max(ranked)
    return name, accuracy


def verdict_rows(grid: Grid) -> list[list[str]]:
    """Per attack: the best defence, its Δ against clean FedAvg, and whether it is within goal."""
    clean = grid[CLEAN][FEDAVG].accuracy
    rows = []
    for attack, cells in grid.items():
        best = best_defence(cells)
        if attack == CLEAN or best is None:
            continue
        name, accuracy = best
        gap = (clean - accuracy) * 100
        rows.append(
            [attack, name, _delta(accuracy, clean), "met" if gap <= GOAL_POINTS else "not met"]
        )
    return rows


def _champion(cell: Cell | None, clean: float) -> str:
    if cell is None:
        return "–"
    if cell.champion_round is None or cell.champion_accuracy is None:
        return "none promoted"
    damaged = (clean - cell.champion_accuracy) * 100 > GOAL_POINTS
    return (
        f"round {cell.champion_round}, {cell.champion_accuracy:.3f}"
        f"{', attackers in it' if cell.champion_attacked else ', no attacker in it'}"
        f"{', damaged' if damaged else ''}"
    )


def champion_rows(grid: Grid) -> list[list[str]]:
    """Per attack: FedAvg's and screened FedAvg's champion ("damaged": > 3 points below clean)."""
    clean = grid[CLEAN][FEDAVG].accuracy
    return [
        [attack, _champion(cells.get(FEDAVG), clean), _champion(cells.get(SCREENED), clean)]
        for attack, cells in grid.items()
        if attack != CLEAN
    ]


def print_model(console: Console, model: str, grid: Grid, rounds: int) -> None:
    columns = [d.column for d in DEFENCES]
    where = f"{model}, {CLIENTS} clients, {ATTACKERS} attackers, {rounds} rounds"
    print_table(
        console,
        title=f"Final hold-out accuracy (Δ points vs clean FedAvg): {where}",
        header=["attack", *columns],
        rows=accuracy_rows(grid, columns),
    )
    print_table(
        console,
        title=f"Best defence per attack (goal: within {GOAL_POINTS:g} points of clean): {model}",
        header=["attack", "best defence", "accuracy (Δ)", "goal"],
        rows=verdict_rows(grid),
    )
    print_table(
        console,
        title=f"FedAvg's champion under attack (the gate's last promotion): {model}",
        header=["attack", FEDAVG, SCREENED],
        rows=champion_rows(grid),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke: digits, 2 rounds, 2×3 cells")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--digits-rounds", type=int, default=MODELS["digits-mlp"][1])
    parser.add_argument("--mnist-rounds", type=int, default=MODELS["mnist-cnn"][1])
    parser.add_argument("--json", type=Path, help="also write every cell here")
    args = parser.parse_args()
    models = ["digits-mlp"] if args.quick else args.models
    attacks = [CLEAN, "scale"] if args.quick else list(ATTACKS)
    defences = [DEFENCES[0], DEFENCES[1], DEFENCES[-1]] if args.quick else list(DEFENCES)
    rounds = {"digits-mlp": 2 if args.quick else args.digits_rounds, "mnist-cnn": args.mnist_rounds}
    console = Console()
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, Cell]]] = {}
    for model in models:
        runs_dir = Path(tempfile.mkdtemp(prefix=f"federator-robust-{model}-"))
        grid: dict[str, dict[str, Cell]] = results.setdefault(model, {})
        for attack in attacks:
            for d in defences:
                raw = config_for(model, attack, d, rounds=rounds[model], runs_dir=runs_dir)
                cell = grid.setdefault(attack, {})[d.column] = run_cell(raw)
                console.print(f"[dim]{model} {attack} {d.column}: {cell}[/]", highlight=False)
                if args.json:
                    _write(args.json, results)
        print_model(console, model, grid, rounds[model])
    console.print(
        f"{sum(len(g) for r in results.values() for g in r.values())} runs in "
        f"{(time.monotonic() - started) / 60:.1f} min"
    )


def _write(path: Path, results: Mapping[str, Mapping[str, Mapping[str, Cell]]]) -> None:
    plain = {
        m: {a: {c: asdict(x) for c, x in g.items()} for a, g in r.items()}
        for m, r in results.items()
    }
    path.write_text(json.dumps(plain, indent=1))


if __name__ == "__main__":
    main()
