"""Benchmark: what DP-SGD (Opacus) costs per epoch against plain SGD, on the mnist-cnn CNN.

One process, one thread (``torch.set_num_threads(1)``, as a simulated client runs), the same
data (the union of the ``mnist-cnn`` federation's client training splits), the same batch
size, optimiser and initial weights; variants alternate within each repeat so drift hits all
of them. Variants:

* ``plain`` — Federator's non-private training loop (``ClassificationTask.train``);
* ``federator`` — the same call with ``TrainSettings.dp`` set: what a client runs under
  ``[privacy.local]`` (Opacus ``PrivacyEngine`` set-up, Poisson loader, hooks mode) —
  timed with its set-up, since a client pays it every round;
* ``hooks``, ``functorch``, ``ew``, ``ghost`` — Opacus's per-sample-gradient modes
  (Yousefpour et al. 2021, arXiv:2109.12298; ghost clipping: Li et al. 2022, "Large Language
  Models Can Be Strong Differentially Private Learners", ICLR; Bu et al. 2023, "Differentially
  Private Optimization on Large Model at Small Cost", ICML), epoch timed without set-up.

Reported: the median epoch time per variant and its ratio to ``plain``, in CPU time of this
process (the machine is shared: wall time swings with other load, a one-thread process's CPU
time much less) and in wall time. Goal: ≤ 2.5.

    python -m federator.simulations.bench.opacus_overhead [--repeats 3] [--modes hooks,ghost]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federator.client.tasks import TrainSettings
from federator.privacy import DpSgd
from federator.server.plan import FederationPlan, build_plan, read_config_file, resolve_config_path
from federator.simulations.bench._common import print_table
from federator.simulations.datasets import ArrayData
from federator.simulations.partition import client_data

MODES = ("hooks", "functorch", "ew", "ghost")
# Opacus raises these for a mode/layer combination it does not support.
_UNSUPPORTED = (NotImplementedError, ValueError, RuntimeError, TypeError, AttributeError)


def _plan() -> FederationPlan:
    raw = read_config_file(resolve_config_path("mnist-cnn"))
    return build_plan(raw, source="opacus-overhead benchmark")


def _pooled(plan: FederationPlan, examples: int | None) -> ArrayData:
    parts = [client_data(plan.data, i).train for i in range(plan.data.clients)]
    x, y = np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
    if examples is not None:
        x, y = x[:examples], y[:examples]
    return ArrayData(x, y)


@dataclass(frozen=True)
class Timing:
    """Seconds: set-up (CPU), the epoch in CPU time of this process, and on the wall clock."""

    setup: float
    cpu: float
    wall: float


def _opacus_epoch(
    model: nn.Module, data: ArrayData, settings: TrainSettings, mode: str, sigma: float
) -> Timing:
    """Timing of one DP-SGD epoch in Opacus mode ``mode``."""
    from opacus import PrivacyEngine

    c0 = time.process_time()
    dataset = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    engine = PrivacyEngine(accountant="rdp")
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.CrossEntropyLoss()
    common: dict[str, Any] = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(settings.seed),
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        private, dp_opt, criterion, dp_loader = engine.make_private(**common, criterion=criterion)
    else:
        private, dp_opt, dp_loader = engine.make_private(**common)
    setup = time.process_time() - c0
    private.train()
    c0, w0 = time.process_time(), time.perf_counter()
    for xb, yb in dp_loader:
        dp_opt.zero_grad()
        loss: Any = criterion(private(xb), yb)  # ghost: a tensor doing two backward passes
        loss.backward()
        dp_opt.step()
    return Timing(setup, time.process_time() - c0, time.perf_counter() - w0)


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _run(
    variant: str, plan: FederationPlan, data: ArrayData, seed: int
) -> tuple[Timing, torch.Tensor]:
    """Timing and final weights of ``variant`` from the same initial weights."""
    task = plan.task()
    torch.manual_seed(plan.seed)
    model = task.build_model()
    settings = dataclasses.replace(plan.training, epochs=1, seed=seed)
    if variant in ("plain", "federator"):
        if variant == "federator":
            dp = DpSgd(noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=seed)
            settings = dataclasses.replace(settings, dp=dp)
        c0, w0 = time.process_time(), time.perf_counter()
        task.train(model, data, settings)
        timing = Timing(0.0, time.process_time() - c0, time.perf_counter() - w0)
        return timing, _weights(model)
    return _opacus_epoch(model, data, settings, variant, sigma=1.0), _weights(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="Opacus grad-sample modes")
    parser.add_argument("--examples", type=int, help="use only the first N training examples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook")
    console = Console()

    plan = _plan()
    data = _pooled(plan, args.examples)
    variants = ["plain", "federator", *[m for m in args.modes.split(",") if m]]
    unsupported: dict[str, str] = {}
    # Warm-up, and a check that the Opacus modes compute the same thing: with the same seed
    # they draw the same Poisson batches and noise, so after 20 steps from the same weights
    # they must agree to float rounding (over a whole epoch with momentum, rounding
    # differences grow to ~1e-2, so the check is done here).
    console.print(f"[dim]warm-up and agreement check on 640 examples: {', '.join(variants)}…[/]")
    warm = ArrayData(data.x[:640], data.y[:640])
    warm_weights: dict[str, torch.Tensor] = {}
    for v in variants:
        try:
            _, warm_weights[v] = _run(v, plan, warm, seed=0)
        except _UNSUPPORTED as err:
            unsupported[v] = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    gaps = {
        v: float((w - warm_weights["hooks"]).abs().max())
        for v, w in warm_weights.items()
        if v in MODES and "hooks" in warm_weights
    }
    runnable = [v for v in variants if v not in unsupported]
    times: dict[str, list[Timing]] = {v: [] for v in runnable}
    for r in range(args.repeats):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
        for v in order:
            console.print(f"[dim]repeat {r + 1}/{args.repeats}: {v}…[/]")
            times[v].append(_run(v, plan, data, seed=r + 1)[0])

    def med(v: str, attr: str) -> float:
        return float(statistics.median(getattr(t, attr) for t in times[v]))

    plain_cpu, plain_wall = med("plain", "cpu"), med("plain", "wall")
    rows = []
    for v in runnable:
        rows.append(
            (
                v,
                f"{med(v, 'cpu'):.2f}",
                ", ".join(f"{t.cpu:.2f}" for t in times[v]),
                f"{med(v, 'wall'):.2f}",
                f"{med(v, 'setup'):.2f}",
                f"{gaps[v]:.0e}" if v in gaps else "–",
                f"{med(v, 'cpu') / plain_cpu:.2f}",
                f"{med(v, 'wall') / plain_wall:.2f}",
            )
        )
    rows += [(v, "–", why, "–", "–", "–", "–", "–") for v, why in unsupported.items()]
    t = plan.training
    title = (
        f"Opacus overhead: {plan.task_ref}, {len(data)} examples, batch {t.batch_size}, "
        f"SGD lr {t.lr} momentum {t.momentum}, 1 thread, {args.repeats} repeats"
    )
    cols = (
        "variant",
        "epoch CPU (s), median",
        "per repeat (s)",
        "epoch wall (s)",
        "set-up (s)",
        "weight gap vs hooks",
        "÷ plain (CPU)",
        "÷ plain (wall)",
    )
    print_table(console, title=title, header=cols, rows=rows)
    fed = med("federator", "cpu") / plain_cpu
    best = min(runnable[1:], key=lambda v: med(v, "cpu"))
    best_ratio = med(best, "cpu") / plain_cpu
    console.print(
        "goal: DP epoch ÷ plain (CPU time) ≤ 2.5 → Federator's path "
        f"{'met' if fed <= 2.5 else 'NOT met'} ({fed:.2f}); "
        f"fastest variant: {best} ({best_ratio:.2f})"
    )


if __name__ == "__main__":
    main()
