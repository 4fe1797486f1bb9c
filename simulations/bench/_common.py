"""Shared pieces of the benchmarks: a bare Flower app doing Federator's training, timing."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from rich.console import Console
from rich.table import Table

from federator.server.federation.events import FederationStarted, FederationSummary, RoundOutcome
from federator.server.federation.instructions import initial_arrays
from federator.server.plan import FederationPlan
from federator.simulations.bench._cpu import CpuStamps
from federator.simulations.partition import client_data
from federator.strategies.forwarding import ForwardingStrategy


class Stamped(ForwardingStrategy):
    """Wraps a strategy and records when each round starts (its ``configure_train``)."""

    def __init__(self, inner: Strategy, stamps: list[float]) -> None:
        super().__init__(inner)
        self.stamps = stamps

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.stamps.append(time.monotonic())
        return self.inner.configure_train(server_round, arrays, config, grid)


def bare_flower_apps(
    plan: FederationPlan, stamps: list[float], *, poll: float | None = None
) -> tuple[ServerApp, ClientApp]:
    """Plain Flower: FedAvg's own ``start`` loop and a ClientApp running the same task code on
    the same partitions — without screening, server-side evaluation, gate or MLflow.
    ``poll``: seconds between the ServerApp's pulls for replies (None: Flower's 0.1 s)."""
    task, settings, spec = plan.task(), plan.training, plan.data
    n = spec.clients

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        data = client_data(spec, int(context.node_config["partition-id"]))
        model = task.build_model()
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        metrics = task.train(model, data.train, settings)
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(model.state_dict()),
                    "metrics": MetricRecord({"num-examples": len(data.train), **metrics}),
                }
            ),
            reply_to=msg,
        )

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        data = client_data(spec, int(context.node_config["partition-id"]))
        model = task.build_model()
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        result = task.evaluate(model, data.val)
        return Message(
            RecordDict(
                {
                    "metrics": MetricRecord(
                        {
                            "num-examples": result.num_examples,
                            "loss": result.loss,
                            "accuracy": result.accuracy,
                        }
                    )
                }
            ),
            reply_to=msg,
        )

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if poll is not None and isinstance(grid, InMemoryGrid):
            grid.pull_interval = poll
        # min_* = n: like Federator, wait for every node before sampling round 1.
        strategy = Stamped(
            FedAvg(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n), stamps
        )
        strategy.start(
            grid=grid, initial_arrays=initial_arrays(task, plan.seed), num_rounds=plan.rounds
        )
        stamps.append(time.monotonic())

    return server, client


class StampDisplay:
    """A silent display that records when the federation starts and each round ends."""

    def __init__(self) -> None:
        self.stamps: CpuStamps = CpuStamps()
        self.outcomes: list[RoundOutcome] = []
        self.finished: float | None = None
        self.result: FederationSummary | None = None

    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to show."""

    def on_start(self, event: FederationStarted) -> None:
        self.stamps.append(time.monotonic())

    def on_round(self, outcome: RoundOutcome) -> None:
        self.stamps.append(time.monotonic())
        self.outcomes.append(outcome)

    def stop(self) -> None:
        self.finished = time.monotonic()

    def saving(self, pending: int) -> None:
        """Nothing to show."""

    def saved(self, round_: int) -> None:
        """Nothing to show (the summary carries the lag)."""

    def held_back(self, round_: int, saved_through: int) -> None:
        """Nothing to show."""

    def on_release(self, report: object) -> None:
        """Nothing to show."""

    def summary(self, s: FederationSummary) -> None:
        self.result = s


def round_times(stamps: list[float]) -> list[float]:
    """Durations between consecutive stamps (round k starts → round k+1 starts)."""
    return [b - a for a, b in itertools.pairwise(stamps)]


def steady(times: list[float]) -> float:
    """Median round time without round 1 (which includes starting Ray's workers)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def run_variant(module: str, variant: str, *args: str) -> dict[str, object]:
    """Run ``python -m module --variant VARIANT`` in a fresh process (fresh Ray), read JSON."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"federator-bench-{os.getpid()}-{variant}.json"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    subprocess.run(
        [sys.executable, "-m", module, "--variant", variant, "--json", str(out), *args],
        check=True,
        env=env,
    )
    result: dict[str, object] = json.loads(out.read_text())
    out.unlink()
    return result


def print_table(
    console: Console, *, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    """Print ``rows`` as a rich table, then the same table as markdown for docs/benchmarks.md."""
    table = Table(title=title, title_justify="left")
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("markdown:\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        console.print("| " + " | ".join(row) + " |", highlight=False, soft_wrap=True)


def ratio_interval(
    base: Sequence[Sequence[float]],
    ours: Sequence[Sequence[float]],
    *,
    rng: np.random.Generator,
    samples: int = 4000,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Ratio of mean steady round times, ours ÷ base, with a bootstrap interval.

    Each argument holds one list of round times per run (round 1 already left out). The
    bootstrap is hierarchical — resample runs, then rounds within each drawn run — because
    runs differ more from each other (Ray placement, drift) than rounds within a run do, and
    a plain resampling of all rounds would claim more precision than the runs allow
    (Davison & Hinkley 1997, Bootstrap Methods and their Application, §3.8).
    Returns (point estimate, lower, upper) at ``level``.
    """
    if not base or not ours or not all(base) or not all(ours):
        raise ValueError("every run needs at least one round time")

    def draw(runs: Sequence[Sequence[float]]) -> float:
        picked = rng.integers(len(runs), size=len(runs))
        total = count = 0.0
        for i in picked:
            times = np.asarray(runs[i], dtype=float)
            total += float(times[rng.integers(len(times), size=len(times))].sum())
            count += len(times)
        return total / count

    def mean(runs: Sequence[Sequence[float]]) -> float:
        return float(np.concatenate([np.asarray(r, dtype=float) for r in runs]).mean())

    point = mean(ours) / mean(base)
    ratios = np.array([draw(ours) / draw(base) for _ in range(samples)])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return point, float(lo), float(hi)
