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
AAAI), 26k parameters instead of ``mnist-cnn``'s 114k. ``--epsilon 0`` trains without DP;
a huge ε (e.g. 1e4) clips without meaningful noise, which separates what clipping costs
from what noise costs.

    python -m federator.simulations.bench.dp_recipe --epsilon 8 --batch-size 128 --lr 0.5 \\
        --momentum 0.5 [--model mnist-cnn|tanh] [--rounds 30] [--epochs 1] [--clip 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from federator.client.tasks import resolve_task
from federator.client.tasks.classification import ClassificationTask
from federator.client.tasks.protocol import Optimizer, TrainSettings
from federator.privacy.accounting import Accountant
from federator.privacy.dpsgd import DpSgd
from federator.privacy.policy import LocalDpTarget
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="mnist-cnn", help="mnist-cnn or tanh")
    parser.add_argument("--epsilon", type=float, default=8.0, help="0: no DP")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--clip", type=float, default=1.0)
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
    torch.manual_seed(spec.seed)
    model = task.build_model()
    target = (
        LocalDpTarget(
            target_epsilon=args.epsilon,
            delta=args.delta,
            max_grad_norm=args.clip,
            accountant=Accountant.RDP,
            rounds=args.rounds,
        )
        if args.epsilon > 0
        else None
    )
    total = sum(len(c) for c in clients)
    start = time.monotonic()
    print(f"{args}\nparameters: {sum(p.numel() for p in model.parameters()):,}")
    for rnd in range(1, args.rounds + 1):
        summed = [torch.zeros_like(p) for p in model.parameters()]
        sigmas = []
        for cid, data in enumerate(clients):
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
                    noise_seed=rnd * 1000 + cid,
                )
            settings = TrainSettings(
                epochs=args.epochs,
                batch_size=args.batch_size,
                optimizer=Optimizer.SGD,
                lr=args.lr,
                momentum=args.momentum,
                seed=rnd * 1000 + cid,
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
            ev = task.evaluate(model, holdout)
            noise = f"σ {min(sigmas):.2f}–{max(sigmas):.2f}" if sigmas else "no DP"
            print(
                f"round {rnd:3d}  hold-out accuracy {ev.accuracy:.4f}  {noise}  "
                f"{time.monotonic() - start:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
