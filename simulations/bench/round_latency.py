"""Benchmark: wall time per round of a real deployment on loopback, bare Flower vs Federator.

Both deployments run on 127.0.0.1 with free ports, side by side in one invocation, on the same
two halves of scikit-learn's digits, the same MLP (64-64-10), the same local training:

* bare Flower 1.42 — ``flower-superlink --insecure``, two ``flower-supernode --insecure`` and a
  minimal Flower App (Message API, ``FedAvg.start``: a train and an evaluate message to every
  node per round), submitted with ``flwr run --stream``;
* Federator — provisioned kits, ``federator coordinator start`` (TLS, node authentication, a
  database), two ``federator node start`` and ``federator run`` (screening, server-side
  validation, the gate, an MLflow model version per round); once as configured by default
  (a train and an evaluate message per round, like the bare app), once with
  ``fraction_evaluate = 0`` (one message per round; the gate judges on the coordinator's
  hold-out only).

The bare deployment runs with Flower's defaults (Federator's environment tuning removed).

Per round we time the arrival of each round's log line in the streamed output (the same
relay for both, so its delay cancels out between rounds). Reported: round 1 on its own (it
includes starting the ServerApp) and the median of rounds 2..N, and the ratio bare / ours.
Goal (issue 5): ratio ≥ 5.

Every process is started in its own process group and stopped by its PID; each deployment
has its own ``FLWR_HOME`` under a temporary folder that is deleted at the end.

    nice -n 15 python -m federator.simulations.bench.round_latency [--rounds 6]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from federator import DeploymentError
from federator.client.processes import BIN, launch
from federator.simulations.bench._latency_bare import run_bare
from federator.simulations.bench._latency_common import (
    STARTED,
    Timing,
    bench_env,
    free_port,
    marks,
    need,
    processes,
    round_times,
    stream,
)

NODES = ("site-a", "site-b")
_OURS_ROUND = re.compile(r"round (\d+): clients")
# Federator's configurations measured: the default (train + evaluate message per round, like
# the bare app), with client-side evaluation off (one message per round; the gate then
# judges on the coordinator's hold-out only), and the default on stock Flower (nodes and run
# with ``--stock-flower``: none of Federator's Flower patches).
VARIANTS: tuple[tuple[str, str, bool], ...] = (
    ("Federator", "", False),
    ("Federator, fraction_evaluate = 0", "[strategy]\nfraction_evaluate = 0.0\n", False),
    ("Federator on stock Flower (--stock-flower)", "", True),
)


def _split_data(folder: Path) -> list[Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    half = len(y) // 2
    paths = []
    for i, name in enumerate(NODES):
        path = folder / f"{name}.npz"
        np.savez(path, x=x[i * half : (i + 1) * half], y=y[i * half : (i + 1) * half])
        paths.append(path)
    return paths


def _federator(args: list[str]) -> list[str]:
    return [str(BIN / "federator"), *args]


def run_federator(
    tmp: Path,
    data: list[Path],
    *,
    rounds: int,
    epochs: int,
    clock: Callable[[], float],
    label: str = "Federator",
    extra: str = "",
    stock: bool = False,
) -> Timing:
    """Federator: provisioned kits, coordinator with TLS + auth, two nodes, ``federator run``.
    ``extra`` is appended to the federation config; ``stock``: nodes and run on stock Flower."""
    flags = ["--stock-flower"] if stock else []
    tmp.mkdir(parents=True)
    port = free_port()
    fed = tmp / "federation.toml"
    fed.write_text(
        f'[federation]\nname = "latency"\ncoordinator = "127.0.0.1:{port}"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\n' for n in NODES)
    )
    env = bench_env(tmp / "flwr-cli")
    kits = tmp / "kits"
    done = subprocess.run(
        _federator(["provision", str(fed), "--out", str(kits)]),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DeploymentError(f"provision failed:\n{done.stdout}{done.stderr}")
    cfg = tmp / "fed.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [federation]
        name = "latency"
        rounds = {rounds}
        seed = 0
        [task]
        name = "digits-mlp"
        [data]
        clients = {len(NODES)}
        [training]
        epochs = {epochs}
        lr = 0.1
        momentum = 0.9
        [tracking]
        runs_dir = "{tmp / "runs"}"
        [gate]
        threshold = 0.1
        """)
        + extra
    )
    t0 = clock()
    with processes() as started:
        started.append(
            launch(
                "coordinator",
                _federator(["coordinator", "start", "--kit", str(kits / "coordinator")]),
                log=tmp / "coordinator.out",
                env=env,
            )
        )
        need(started[0], "ready", timeout=180)
        for name, path in zip(NODES, data, strict=True):
            started.append(
                launch(
                    f"node {name}",
                    _federator(
                        [
                            "node",
                            "start",
                            "--kit",
                            str(kits / "nodes" / name),
                            "--data",
                            str(path),
                            "--port",
                            str(free_port()),
                            *flags,
                        ]
                    ),
                    log=tmp / f"node-{name}.out",
                    env=env,
                )
            )
        for proc in started[1:]:
            need(proc, "connected", timeout=180)
        startup = clock() - t0
        lines = stream(
            _federator(
                [
                    "run",
                    str(cfg),
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--kit",
                    str(kits / "coordinator"),
                    *flags,
                ]
            ),
            env=env,
            log=tmp / "run.out",
            clock=clock,
        )
    start = marks(lines, STARTED)
    ends = marks(lines, _OURS_ROUND)
    if len(start) != 1 or len(ends) != rounds:
        raise DeploymentError(f"federator run: expected {rounds} rounds; see {tmp / 'run.out'}")
    return Timing(label, round_times(start[0], ends), startup)


def table(bare: Timing, variants: list[Timing]) -> Table:
    out = Table(title="Round latency, 2 nodes on loopback (seconds)")
    for column in ("deployment", "start-up", "round 1", "rounds 2..N (median)", "all rounds"):
        out.add_column(column, justify="left" if column == "deployment" else "right")
    for t in (bare, *variants):
        out.add_row(
            t.name,
            f"{t.startup:.1f}",
            f"{t.first:.1f}",
            f"{t.steady:.1f}",
            " ".join(f"{r:.1f}" for r in t.rounds),
        )
    for ours in variants:
        out.add_row(
            f"ratio bare / {ours.name}",
            f"{bare.startup / ours.startup:.2f}",
            f"{bare.first / ours.first:.2f}",
            f"{bare.steady / ours.steady:.2f}",
            "goal ≥ 5 (rounds 2..N)",
        )
    return out


def markdown(bare: Timing, variants: list[Timing]) -> str:
    """The same numbers as a Markdown table (for docs/benchmarks.md)."""
    rows = [
        "| deployment | start-up (s) | round 1 (s) | rounds 2..N, median (s) | every round (s) "
        "| bare ÷ this, rounds 2..N |",
        "|---|---|---|---|---|---|",
    ]
    for t in (bare, *variants):
        rows.append(
            f"| {t.name} | {t.startup:.1f} | {t.first:.1f} | {t.steady:.1f} | "
            + ", ".join(f"{r:.1f}" for r in t.rounds)
            + f" | {bare.steady / t.steady:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per deployment (≥ 2)")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument(
        "--default-only", action="store_true", help="only Federator's default configuration"
    )
    parser.add_argument("--keep", type=Path, help="keep logs in this folder (else a temp dir)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="federator-latency-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        data = _split_data(root)
        clock = time.monotonic
        console.print(f"bare Flower: {args.rounds} rounds …")
        bare = run_bare(root / "bare", data, rounds=args.rounds, epochs=args.epochs, clock=clock)
        variants = []
        for i, (label, extra, stock) in enumerate(VARIANTS[: 1 if args.default_only else None]):
            console.print(f"{label}: {args.rounds} rounds …")
            variants.append(
                run_federator(
                    root / f"federator-{i}",
                    data,
                    rounds=args.rounds,
                    epochs=args.epochs,
                    clock=clock,
                    label=label,
                    extra=extra,
                    stock=stock,
                )
            )
    console.print(table(bare, variants))
    console.print(markdown(bare, variants), soft_wrap=True)


if __name__ == "__main__":
    main()
