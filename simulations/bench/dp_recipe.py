"""Sweep: which local DP-SGD recipe gets the most out of a privacy budget on ``mnist-cnn``.

The privacy-accuracy benchmark runs the whole federation (Ray, Flower, MLflow): 5–17 min
per setting. This script runs the same arithmetic in one process in under 2 min per
setting, to find settings worth a full run: the ``mnist-cnn.toml`` data split (10 clients,
Dirichlet α = 0.5, seed 7), each client training with Federator's own task code and
Opacus DP-SGD at the σ that `LocalDpTarget.round_charge` gives it (the client's real code
path), weighted FedAvg (McMahan et al. 2017), accuracy on the coordinator's 1,000 held-out
digits. No screening, tracking or messaging. Noise seeds are fixed for repeatability.

``--model tanh`` is the small CNN with tempered-sigmoid (tanh) activations of Papernot et
al. 2021 ("Tempered Sigmoid Activations for Deep Learning with Differential Privacy",
AAAI), 26k parameters instead of ``mnist-cnn``'s 114k. ``--model mnist-scatter`` is the
built-in linear model on ScatterNet features (Tramèr & Boneh 2021), the one the DP recipe
uses. ``--epsilon 0`` trains without DP;
a huge ε (e.g. 1e4) clips without meaningful noise, which separates what clipping costs
from what noise costs.

    python -m federator.simulations.bench.dp_recipe --epsilon 8 --batch-size 128 --lr 0.5 \\
        --momentum 0.5 [--model mnist-cnn|mnist-scatter|tanh] [--rounds 30] [--epochs 1]
        [--clip 1] [--accountant rdp|prv]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from federator.client.tasks import resolve_task
from federator.client.tasks.classification import ClassificationTask
from federator.client.tasks.protocol import Optimizer, TrainSettings
from federator.privacy.accounting import Accountant
from federator.privacy.dpsgd import DpSgd
from federator.privacy.policy import LocalDpTarget
from federator.simulations.datasets import ArrayData
from federator.simulations.partition import (
    Partitioner,
    SimulationData,
    client_data,
    server_holdout,
)


def tanh_cnn() -> nn.Module:
    """Papernot et al. 2021's MNIST CNN with tanh activations (26,010 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


def _task(model: str) -> ClassificationTask:
    if model == "tanh":
        return ClassificationTask(
            name="tanh", dataset="mnist", input_shape=(1, 28, 28), model_factory=tanh_cnn
        )
    task = resolve_task(model)
    if not isinstance(task, ClassificationTask):
        raise SystemExit(f"{model!r} is not a classification task")
    return task


def _federate(
    args: argparse.Namespace,
    task: ClassificationTask,
    *,
    clients: list[ArrayData],
    holdout: ArrayData,
    repeat: int,
) -> float:
    """One federation; ``repeat`` shifts every noise and shuffling seed. Final accuracy."""
    torch.manual_seed(7)
    model = task.build_model()
    target = (
        LocalDpTarget(
            target_epsilon=args.epsilon,
            delta=args.delta,
            max_grad_norm=args.clip,
            accountant=Accountant(args.accountant),
            rounds=args.rounds,
        )
        if args.epsilon > 0
        else None
    )
    total = sum(len(c) for c in clients)
    start = time.monotonic()
    accuracy = float("nan")
    for rnd in range(1, args.rounds + 1):
        summed = [torch.zeros_like(p) for p in model.parameters()]
        sigmas = []
        for cid, data in enumerate(clients):
            seed = repeat * 1_000_000 + rnd * 1000 + cid
            local = copy.deepcopy(model).train()
            dp = None
            if target is not None:
                charge = target.round_charge(
                    num_examples=len(data), batch_size=args.batch_size, epochs=args.epochs
                )
                sigmas.append(charge.noise_multiplier)
                dp = DpSgd(
                    noise_multiplier=charge.noise_multiplier,
                    max_grad_norm=args.clip,
                    noise_seed=seed,
                )
            settings = TrainSettings(
                epochs=args.epochs,
                batch_size=args.batch_size,
                optimizer=Optimizer.SGD,
                lr=args.lr,
                momentum=args.momentum,
                seed=seed,
                dp=dp,
            )
            task.train(local, data, settings)
            with torch.no_grad():
                for acc, p in zip(summed, local.parameters(), strict=True):
                    acc.add_(p.detach() * (len(data) / total))
        with torch.no_grad():
            for p, avg in zip(model.parameters(), summed, strict=True):
                p.copy_(avg)
        if rnd % args.every == 0 or rnd == args.rounds:
            accuracy = task.evaluate(model, holdout).accuracy
            noise = f"σ {min(sigmas):.2f}–{max(sigmas):.2f}" if sigmas else "no DP"
            print(
                f"repeat {repeat}  round {rnd:3d}  hold-out accuracy {accuracy:.4f}  {noise}  "
                f"{time.monotonic() - start:.0f} s",
                flush=True,
            )
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="mnist-cnn", help="a task name, or tanh")
    parser.add_argument("--epsilon", type=float, default=8.0, help="0: no DP")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--accountant", default="rdp", help="rdp or prv")
    parser.add_argument("--repeats", type=int, default=1, help="federations with other seeds")
    parser.add_argument("--every", type=int, default=10, help="evaluate every N rounds")
    args = parser.parse_args()

    torch.set_num_threads(1)
    spec = SimulationData(
        dataset="mnist",
        clients=10,
        partitioner=Partitioner.DIRICHLET,
        seed=7,
        alpha=0.5,
        server_holdout=0.2,
        client_val_fraction=0.1,
    )
    clients = [client_data(spec, i).train for i in range(spec.clients)]
    holdout = server_holdout(spec)
    task = _task(args.model)
    print(f"{args}\nparameters: {sum(p.numel() for p in task.build_model().parameters()):,}")
    finals = [
        _federate(args, task, clients=clients, holdout=holdout, repeat=r)
        for r in range(args.repeats)
    ]
    spread = f" ± {statistics.stdev(finals):.4f} (sd)" if len(finals) > 1 else ""
    print(f"final accuracy over {len(finals)} federation(s): {statistics.mean(finals):.4f}{spread}")


if __name__ == "__main__":
    main()
