"""Benchmark: Federator's aggregators against Flower's, side by side in one run.

Every case runs in a fresh interpreter (so one case's memory cannot hide another's): it builds
n train replies (Flower Messages, one float32 array of p values each — p−1000 weights and a
1000-value bias), then times ``aggregate_train`` of either Flower's strategy or the same
strategy wrapped in Federator's `FastAggregation`. Printed, with the ratios:

* FedAvg at p = 10 M for n = 10, 30, 100: seconds, throughput (GB/s of reply payload read,
  n × p × 4 bytes ÷ seconds) and **extra peak RSS**: the process's peak resident set while
  aggregating minus its resident set just before (replies built, garbage collected; the peak is
  reset through ``/proc/self/clear_refs`` first) — what the aggregation itself adds on top of
  the replies it is handed, output included. Shown in MiB and in models (÷ p × 4 bytes).
* Krum, Multi-Krum (f = 10, m = 20), median, trimmed mean (β = 0.1) and Bulyan (f = 10) at
  n = 100, p = 1 M. Krum also against Flower's legacy `aggregate_krum` (the Python double
  loop, given the replies decoded as NDArrays, decoding included) and against Flower's
  Message-API Krum held to one BLAS thread (OpenBLAS threads spin against each other on a
  shared 2-core machine).
* max |Δ|: the largest difference between our aggregate and Flower's, relative to the largest
  input value (each side's output is saved by its child and compared by the parent).

    python -m federator.simulations.bench.aggregation [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from flwr.supercore.task_identity import TaskIdentity
from rich.console import Console
from threadpoolctl import threadpool_limits

from federator.strategies.aggregation import (
    Aggregator,
    Bulyan,
    FastAggregation,
    Median,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)

F, M, BETA = 10, 20, 0.1  # malicious bound, Multi-Krum's selection, trimmed fraction
WEIGHT_KEY = "weight"


@dataclass(frozen=True)
class Case:
    """One measurement: ``method`` by ``impl`` ("flower", "ours", "flower-legacy",
    "flower-1blas") on n replies of p values."""

    method: str
    impl: str
    n: int
    p: int
    repeats: int = 1
    out: str = ""


def _flower_strategy(method: str, n: int) -> fl.FedAvg:
    key, f = WEIGHT_KEY, min(F, (n - 3) // 4)
    strategies: dict[str, Callable[[], fl.FedAvg]] = {
        "fedavg": lambda: fl.FedAvg(weighted_by_key=key),
        "krum": lambda: fl.Krum(num_malicious_nodes=F, weighted_by_key=key),
        "multikrum": lambda: fl.MultiKrum(
            num_malicious_nodes=F, num_nodes_to_select=M, weighted_by_key=key
        ),
        "median": lambda: fl.FedMedian(weighted_by_key=key),
        "trimmed": lambda: fl.FedTrimmedAvg(beta=BETA, weighted_by_key=key),
        "bulyan": lambda: fl.Bulyan(num_malicious_nodes=f, weighted_by_key=key),
    }
    return strategies[method]()


def _ours(method: str, n: int) -> Aggregator:
    aggregators: dict[str, Callable[[], Aggregator]] = {
        "fedavg": WeightedMean,
        "krum": lambda: MultiKrum(num_malicious=F, num_to_select=1),
        "multikrum": lambda: MultiKrum(num_malicious=F, num_to_select=M),
        "median": Median,
        "trimmed": lambda: TrimmedMean(BETA),
        "bulyan": lambda: Bulyan(num_malicious=min(F, (n - 3) // 4)),
    }
    return aggregators[method]()


def _as_server_app() -> None:
    """Messages need a task identity; outside a running ServerApp, give one (if none)."""
    try:
        _ = TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id
    except RuntimeError:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def make_replies(n: int, p: int, seed: int = 0) -> list[Message]:
    """n replies: client i's weights are a shared base plus its own (shifted) noise."""
    _as_server_app()
    rng = np.random.default_rng(seed)
    bias = min(1000, p // 2)
    base = rng.standard_normal(p, dtype=np.float32)
    noise = rng.standard_normal(p, dtype=np.float32)
    replies = []
    for i in range(n):
        x = base + np.float32(0.1 * (1 + i % 7)) * np.roll(noise, 7919 * i)
        arrays = ArrayRecord({"w": Array(x[bias:].copy()), "b": Array(x[:bias].copy())})
        del x
        metrics = MetricRecord({WEIGHT_KEY: 10 + i % 5, "loss": 0.1 * i})
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        replies.append(Message(content, dst_node_id=i + 1, message_type="train"))
    return replies


def _legacy_krum(replies: list[Message]) -> ArrayRecord:
    from flwr.server.strategy.aggregate import aggregate_krum

    records = [next(iter(r.content.array_records.values())) for r in replies]
    results = [(rec.to_numpy_ndarrays(), 1) for rec in records]
    arrays = aggregate_krum(results, num_malicious=F, to_keep=0)
    return ArrayRecord(dict(zip(records[0].keys(), map(Array, arrays), strict=True)))


def _run(case: Case, replies: list[Message]) -> ArrayRecord | None:
    if case.impl == "flower-legacy":
        return _legacy_krum(replies)
    strategy = _flower_strategy(case.method, case.n)
    if case.impl == "ours":
        arrays, _ = FastAggregation(strategy, _ours(case.method, case.n)).aggregate_train(
            1, replies
        )
    elif case.impl == "flower-1blas":
        with threadpool_limits(limits=1, user_api="blas"):
            arrays, _ = strategy.aggregate_train(1, replies)
    else:
        arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(case: Case) -> dict[str, float]:
    """Build the replies, then time ``case.repeats`` aggregations (fresh replies each time
    for Flower's median, trimmed mean and Bulyan, which empty the replies they read) and
    report the extra peak RSS in bytes. Saves the aggregate to ``case.out`` if set."""
    mutates = case.impl.startswith("flower") and case.method in {"median", "trimmed", "bulyan"}
    seconds, extra, arrays = [], 0, None
    for _ in range(case.repeats):
        replies = make_replies(case.n, case.p)
        arrays = None
        gc.collect()
        exact = _reset_peak()
        before = (
            _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        t0 = time.perf_counter()
        arrays = _run(case, replies)
        seconds.append(time.perf_counter() - t0)
        peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra = max(extra, (peak - before) * 1024)
        if not mutates:
            break
    if not mutates:  # the same replies again: the later runs are warm
        for _ in range(case.repeats - 1):
            t0 = time.perf_counter()
            arrays = _run(case, replies)
            seconds.append(time.perf_counter() - t0)
    assert arrays is not None
    if case.out:
        np.save(case.out, np.concatenate([arrays["w"].numpy(), arrays["b"].numpy()]))
    return {"seconds": min(seconds), "extra_bytes": float(extra)}


def in_subprocess(case: Case) -> dict[str, float]:
    """`measure` in a fresh interpreter (its result as one JSON line)."""
    done = subprocess.run(
        [sys.executable, "-m", "federator.simulations.bench.aggregation", "--child"],
        input=json.dumps(asdict(case)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def max_delta(ours: str, flower: str) -> float:
    """max |ours − Flower's| of two saved aggregates, relative to Flower's largest value."""
    x, y = np.load(ours, allow_pickle=False), np.load(flower, allow_pickle=False)
    return float(np.abs(x.astype(np.float64) - y).max() / max(1.0, float(np.abs(y).max())))


@dataclass(frozen=True)
class Sizes:
    mean_p: int
    mean_ns: tuple[int, ...]
    robust_n: int
    robust_p: int


FULL = Sizes(mean_p=10_000_000, mean_ns=(10, 30, 100), robust_n=100, robust_p=1_000_000)
QUICK = Sizes(mean_p=200_000, mean_ns=(4, 8), robust_n=24, robust_p=50_000)


Result = dict[str, float]


def _pair(
    method: str, n: int, p: int, repeats: int, tmp: str, flower: str = "flower"
) -> tuple[Result, Result, float]:
    ours_out, flower_out = f"{tmp}/{method}-{n}-ours.npy", f"{tmp}/{method}-{n}-{flower}.npy"
    ours = in_subprocess(Case(method, "ours", n, p, repeats, ours_out))
    theirs = in_subprocess(Case(method, flower, n, p, repeats, flower_out))
    return theirs, ours, max_delta(ours_out, flower_out)


def _mib(extra: float, p: int) -> str:
    return f"{extra / 2**20:,.0f} MiB ({extra / (4 * p):.2f}×)"


def mean_rows(sizes: Sizes, repeats: int, tmp: str) -> list[list[str]]:
    rows = []
    for n in sizes.mean_ns:
        theirs, ours, delta = _pair("fedavg", n, sizes.mean_p, repeats, tmp)
        gbs = [n * sizes.mean_p * 4 / r["seconds"] / 1e9 for r in (theirs, ours)]
        rows.append(
            [
                str(n),
                f"{theirs['seconds']:.2f} s, {gbs[0]:.2f} GB/s",
                _mib(theirs["extra_bytes"], sizes.mean_p),
                f"{ours['seconds']:.3f} s, {gbs[1]:.2f} GB/s",
                _mib(ours["extra_bytes"], sizes.mean_p),
                f"{theirs['seconds'] / ours['seconds']:.1f}×",
                f"{delta:.1e}",
            ]
        )
    return rows


ROBUST = (
    ("krum", "flower-legacy", "legacy aggregate_krum", 20),
    ("krum", "flower", "Krum", 20),
    ("krum", "flower-1blas", "Krum, 1 BLAS thread", 20),
    ("multikrum", "flower", "MultiKrum", 20),
    ("median", "flower", "FedMedian", 5),
    ("trimmed", "flower", "FedTrimmedAvg", 5),
    ("bulyan", "flower", "Bulyan", 0),
)


def robust_rows(sizes: Sizes, repeats: int, tmp: str) -> list[list[str]]:
    rows, n, p = [], sizes.robust_n, sizes.robust_p
    for method, impl, label, goal in ROBUST:
        theirs, ours, delta = _pair(method, n, p, repeats, tmp, impl)
        speedup = theirs["seconds"] / ours["seconds"]
        verdict = "—" if not goal else ("met" if speedup >= goal else "missed")
        rows.append(
            [
                method,
                f"Flower {label}",
                f"{theirs['seconds']:.2f}",
                f"{ours['seconds']:.3f}",
                f"{speedup:.1f}×",
                f"≥ {goal}×: {verdict}" if goal else "—",
                f"{delta:.1e}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(Case(**json.loads(sys.stdin.read())))))
        return
    from federator.simulations.bench._common import print_table

    sizes, console = (QUICK if args.quick else FULL), Console()
    console.print(f"{os.cpu_count()} cores; best of {args.repeats}; each case a fresh process")
    with tempfile.TemporaryDirectory(prefix="federator-agg-") as tmp:
        print_table(
            console,
            title=f"FedAvg, p = {sizes.mean_p:,} float32 (extra peak RSS: MiB and × one model)",
            header=["n", "Flower", "Flower extra", "ours", "ours extra", "speed-up", "max |Δ|"],
            rows=mean_rows(sizes, args.repeats, tmp),
        )
        print_table(
            console,
            title=f"Robust aggregators, n = {sizes.robust_n}, p = {sizes.robust_p:,} float32",
            header=["method", "against", "Flower s", "ours s", "speed-up", "goal", "max |Δ|"],
            rows=robust_rows(sizes, args.repeats, tmp),
        )


if __name__ == "__main__":
    main()
