"""The bare Flower 1.42 deployment of the round-latency benchmark: ``flower-superlink
--insecure``, two ``flower-supernode --insecure`` and a minimal Flower App, Flower's defaults."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

from federator import DeploymentError
from federator.client.processes import flower_command, launch
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

_BARE_ROUND = re.compile(r"\[ROUND (\d+)/\d+\]")
_BARE_DONE = re.compile(r"Strategy execution finished")

_BARE_APP = '''
"""A minimal Flower 1.42 App: FedAvg over an MLP on the digits half each node was given."""

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )


def _data(context):
    d = np.load(str(context.node_config["data"]))
    x, y = torch.tensor(d["x"]), torch.tensor(d["y"]).long()
    cut = int(0.8 * len(y))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    model = _model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    (x, y), _ = _data(context)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(int(context.run_config["epochs"])):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            loss.backward()
            opt.step()
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = _model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, (x, y) = _data(context)
    with torch.no_grad():
        out = model(x)
    acc = float((out.argmax(1) == y).float().mean())
    loss = float(torch.nn.functional.cross_entropy(out, y))
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(_model().state_dict()),
        num_rounds=int(context.run_config["num-rounds"]),
    )
'''

_BARE_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "latency-bare"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "latency_bare_app:server"
clientapp = "latency_bare_app:client"

[tool.flwr.app.config]
num-rounds = 3
epochs = 1
"""


def run_bare(
    tmp: Path, data: list[Path], *, rounds: int, epochs: int, clock: Callable[[], float]
) -> Timing:
    """Bare Flower 1.42: insecure SuperLink, two SuperNodes, ``flwr run --stream``."""
    app = tmp / "app"
    app.mkdir(parents=True)
    (app / "pyproject.toml").write_text(_BARE_PYPROJECT)
    (app / "latency_bare_app.py").write_text(textwrap.dedent(_BARE_APP))
    port = free_port()
    cli_home = tmp / "flwr-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "bare"\n\n[superlink.bare]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    t0 = clock()
    with processes() as started:
        started.append(
            launch(
                "superlink",
                [
                    flower_command("flower-superlink"),
                    "--insecure",
                    "--disable-runtime-dependency-installation",
                    "--database",
                    str(tmp / "state.db"),
                    "--port",
                    str(port),
                ],
                log=tmp / "superlink.log",
                env=bench_env(tmp / "flwr-superlink", bare=True),
            )
        )
        for i, path in enumerate(data):
            started.append(
                launch(
                    f"supernode-{i}",
                    [
                        flower_command("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        f"data='{path}'",
                    ],
                    log=tmp / f"supernode-{i}.log",
                    env=bench_env(tmp / f"flwr-node-{i}", bare=True),
                )
            )
        for proc in started[1:]:
            need(proc, "SuperNode ID", timeout=120)
        startup = clock() - t0
        lines = stream(
            [
                flower_command("flwr"),
                "run",
                str(app),
                "bare",
                "--stream",
                "--run-config",
                f"num-rounds={rounds} epochs={epochs}",
            ],
            env=bench_env(cli_home, bare=True),
            log=tmp / "run.out",
            clock=clock,
        )
    start = marks(lines, STARTED)
    ends = marks(lines, _BARE_ROUND)[1:] + marks(lines, _BARE_DONE)
    if len(start) != 1 or len(ends) != rounds:
        raise DeploymentError(f"bare run: expected {rounds} rounds; see {tmp / 'run.out'}")
    return Timing("bare Flower 1.42", round_times(start[0], ends), startup)
