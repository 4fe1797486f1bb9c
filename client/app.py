"""The Federator ClientApp: local training and evaluation on a node's own data.

One app serves simulation and (later) deployment. Each message carries the coordinator's
instructions (`federator.client.instructions`); the node's identity and data come from its
own node config — in simulation, Flower's ``partition-id`` / ``num-partitions``.

Expected refusals (malformed instructions, a global model that does not fit the task, data
that cannot be loaded) are answered with an error reply naming the reason, so the coordinator
can log it and carry on with the other clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federator import FederatorError, ReleaseRefused, __version__
from federator.client._privacy import DP_STEPS, dp_metrics, private_settings
from federator.client._secagg import secagg_client_mods, secagg_handler
from federator.client.instructions import Instructions, read_instructions
from federator.client.local_data import load_node_data
from federator.client.node import (
    dp_noise_seed,
    installed_version,
    node_policy,
    node_settings,
    open_store,
    privacy_policy,
)
from federator.client.packing import packed_io
from federator.client.tasks import Task, resolve_task
from federator.client.weights import load_arrays, model_arrays
from federator.client.wire import (
    FILE_PREFIX,
    INSTALLED_KEY,
    LABEL_KEY,
    META_KEY,
    NUM_EXAMPLES,
    RELEASE_ACTION,
    RELEASE_KEY,
    SECAGG_ACTION,
    VERSION_KEY,
    DeliveryStatus,
    NodeConfigKey,
    ReplyCode,
)
from federator.privacy.central import client_clipping
from federator.simulations.partition import ClientData, client_data

REFUSED = int(ReplyCode.REFUSED)  # refusals Federator makes on purpose


def node_label(context: Context) -> str:
    """A stable name for this node: its configured ``name``, else its simulation partition."""
    name = context.node_config.get(NodeConfigKey.NAME)
    if isinstance(name, str) and name:
        return name
    pid = context.node_config.get(NodeConfigKey.PARTITION_ID)
    if pid is None:
        raise FederatorError(
            "this node has neither a 'name' nor a 'partition-id' in its node config"
        )
    return f"partition-{int(pid)}"


def _meta(context: Context) -> ConfigRecord:
    label = node_label(context)
    return ConfigRecord(
        {
            LABEL_KEY: label,
            VERSION_KEY: __version__,
            INSTALLED_KEY: installed_version(node_settings(context, label)),
        }
    )


def _local_data(instr: Instructions, context: Context, task: Task) -> ClientData:
    own = context.node_config.get(NodeConfigKey.DATA)
    if isinstance(own, str) and own:  # a deployed node: the partner's own data
        return load_node_data(
            Path(own), input_shape=task.input_shape, val_fraction=instr.data.client_val_fraction
        )
    spec = instr.data
    num = context.node_config.get(NodeConfigKey.NUM_PARTITIONS)
    if num is not None and int(num) != spec.clients:
        raise FederatorError(
            f"the coordinator plans {spec.clients} clients but this "
            f"simulation runs {int(num)} nodes"
        )
    pid = context.node_config.get(NodeConfigKey.PARTITION_ID)
    if pid is None:
        raise FederatorError(
            "this node has no 'partition-id': deployment data loading is not available yet"
        )
    return client_data(spec, int(pid))


def _round_seed(instr: Instructions, server_round: int, label: str) -> int:
    digest = hashlib.sha256(f"{instr.training.seed}:{server_round}:{label}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _prepare(
    msg: Message, context: Context, instr: Instructions | None = None
) -> tuple[Instructions, Task, ClientData, torch.nn.Module]:
    torch.set_num_threads(1)
    if instr is None:
        instr = read_instructions(msg.content.config_records.get("config", ConfigRecord()))
    task = resolve_task(instr.task)
    data = _local_data(instr, context, task)
    model = task.build_model()
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise FederatorError("the message carries no global model ('arrays')")
    load_arrays(model, arrays)
    return instr, task, data, model


def _refusing(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except FederatorError as err:
            return Message(Error(code=REFUSED, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def train(msg: Message, context: Context) -> Message:
    """Train the received global model for one round on the local training split.

    Under central DP with client-side clipping, Flower's clipping mod clips the update to
    the norm the coordinator sent before the reply leaves the node.
    """
    config = msg.content.config_records.get("config", ConfigRecord())
    instr = read_instructions(config)
    if (policy := node_policy(context)) is not None:
        policy.check(instr)  # before anything trains
    return client_clipping(instr.central_clipping, msg, context, lambda m, c: _train(m, c, instr))


def _train(msg: Message, context: Context, parsed: Instructions) -> Message:
    instr, task, data, model = _prepare(msg, context, parsed)
    config = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
    mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    label = node_label(context)
    settings = instr.settings(round_seed=_round_seed(instr, server_round, label), proximal_mu=mu)
    settings, spend = private_settings(
        instr,
        settings,
        task=task,
        model=model,
        data=data.train,
        policy=privacy_policy(context, label),
        server_round=server_round,
        noise_seed=dp_noise_seed(context),
    )
    metrics = task.train(model, data.train, settings)
    delta = instr.local_dp.delta if instr.local_dp else 0.0
    metrics = {k: v for k, v in metrics.items() if k != DP_STEPS} | dp_metrics(
        spend, metrics, delta=delta
    )
    content = RecordDict(
        {
            "arrays": model_arrays(model),
            "metrics": MetricRecord({NUM_EXAMPLES: len(data.train), **metrics}),
            META_KEY: _meta(context),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local validation split."""
    _, task, data, model = _prepare(msg, context)
    if len(data.val) == 0:
        raise FederatorError("this client has no validation examples")
    result = task.evaluate(model, data.val)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    NUM_EXAMPLES: result.num_examples,
                    "loss": result.loss,
                    "accuracy": result.accuracy,
                }
            ),
            META_KEY: _meta(context),
        }
    )
    return Message(content=content, reply_to=msg)


def hello(msg: Message, context: Context) -> Message:
    """Introduce this node: its label and Federator version (sent once per federation)."""
    return Message(content=RecordDict({META_KEY: _meta(context)}), reply_to=msg)


def release(msg: Message, context: Context) -> Message:
    """Verify and install a signed release in this node's store; reply with the outcome.

    A refusal (bad signature, altered file, replay, another model) is an ordinary reply with
    status ``refused`` and the reason, so the coordinator can record it per node.
    """
    label = node_label(context)
    settings = node_settings(context, label)
    record = msg.content.config_records.get(RELEASE_KEY, ConfigRecord())
    envelope = record.get("envelope")
    files = {
        k.removeprefix(FILE_PREFIX): v
        for k, v in record.items()
        if k.startswith(FILE_PREFIX) and isinstance(v, bytes)
    }
    try:
        if not isinstance(envelope, str):
            raise ReleaseRefused("the release message carries no envelope (unsigned)")
        version = open_store(settings).install(envelope, files)
        status, reason = DeliveryStatus.INSTALLED, ""
    except ReleaseRefused as err:
        version, status, reason = 0, DeliveryStatus.REFUSED, f"{type(err).__name__}: {err}"
    content = RecordDict(
        {
            RELEASE_KEY: ConfigRecord(
                {"status": status.value, "version": version, "reason": reason}
            ),
            META_KEY: _meta(context),
        }
    )
    return Message(content=content, reply_to=msg)


def build_client_app() -> ClientApp:
    """A ClientApp wired to the handlers above."""
    app = ClientApp()
    app.train()(_refusing(packed_io(train)))
    app.train(SECAGG_ACTION, mods=secagg_client_mods(refused_code=REFUSED))(secagg_handler(train))
    app.evaluate()(_refusing(packed_io(evaluate)))
    app.query()(_refusing(hello))
    app.query(RELEASE_ACTION)(_refusing(release))
    return app


app = build_client_app()

__all__ = [
    "REFUSED",
    "app",
    "build_client_app",
    "evaluate",
    "hello",
    "node_label",
    "release",
    "train",
]
