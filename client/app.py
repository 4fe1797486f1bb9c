"""The Federator ClientApp: local training and evaluation on a node's own data.

One app serves simulation and deployment. Each message carries the coordinator's
instructions (`federator.client.instructions`); the node's identity, data and settings come
from its own node config, read once per message (`federator.client.node.node_config`) — in
simulation, Flower's ``partition-id`` / ``num-partitions`` and the `SimulatedNodes` the app
was built with (`build_client_app`).

Expected refusals (malformed instructions, a global model that does not fit the task, data
that cannot be loaded) are answered with an error reply naming the reason, so the coordinator
can log it and carry on with the other clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial, update_wrapper

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federator import FederatorError, ReleaseRefused, TaskBundleRefused, __version__
from federator.client._privacy import DP_STEPS, dp_metrics, private_settings
from federator.client._secagg import secagg_handler
from federator.client.identity import sign_hello
from federator.client.instructions import Instructions, read_instructions
from federator.client.local_data import load_node_data
from federator.client.mods import packed_io, refusing
from federator.client.node import (
    NodeConfig,
    SimulatedNodes,
    installed_version,
    node_config,
    node_policy,
    node_task,
    open_store,
    privacy_policy,
)
from federator.client.serving.accuracy import installed_accuracy
from federator.client.serving.report import InstalledAccuracy, serving_report
from federator.client.tasks import Task
from federator.client.weights import load_arrays, model_arrays
from federator.client.wire import (
    CHALLENGE_KEY,
    FILE_PREFIX,
    INSTALLED_KEY,
    LABEL_KEY,
    META_KEY,
    MONITOR_KEY,
    NUM_EXAMPLES,
    PROOF_KEY,
    RELEASE_ACTION,
    RELEASE_KEY,
    SECAGG_ACTION,
    VERSION_KEY,
    DeliveryStatus,
)
from federator.privacy.central import client_clipping
from federator.privacy.secagg_client import secagg_mods
from federator.simulations.partition import ClientData, client_data


def _meta(
    node: NodeConfig, *, report: bool = False, installed: InstalledAccuracy | None = None
) -> ConfigRecord:
    """Who this node is; with ``report`` (train and evaluate replies, which the coordinator
    reads for it) also its model service's report since the last one, and the ``installed``
    version's accuracy on this node's data (evaluate replies)."""
    meta = ConfigRecord(
        {
            LABEL_KEY: node.label,
            VERSION_KEY: __version__,
            INSTALLED_KEY: installed_version(node),
        }
    )
    text = (
        serving_report(node.store, installed=installed)
        if report and node.store is not None
        else None
    )
    if text is not None:  # this node serves its model: what it saw since the last report
        meta[MONITOR_KEY] = text
    return meta


def _local_data(instr: Instructions, node: NodeConfig, task: Task) -> ClientData:
    if node.data is not None:  # a deployed node: the partner's own data
        return load_node_data(
            node.data, input_shape=task.input_shape, val_fraction=instr.data.client_val_fraction
        )
    spec = instr.data
    if node.num_partitions is not None and node.num_partitions != spec.clients:
        raise FederatorError(
            f"the coordinator plans {spec.clients} clients but this "
            f"simulation runs {node.num_partitions} nodes"
        )
    if node.partition_id is None:
        raise FederatorError(
            "this node has no 'partition-id': deployment data loading is not available yet"
        )
    return client_data(spec, node.partition_id)


def _round_seed(instr: Instructions, server_round: int, label: str) -> int:
    digest = hashlib.sha256(f"{instr.training.seed}:{server_round}:{label}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _prepare(
    msg: Message, node: NodeConfig, instr: Instructions, task: Task
) -> tuple[ClientData, torch.nn.Module]:
    torch.set_num_threads(1)
    data = _local_data(instr, node, task)
    model = task.build_model()
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise FederatorError("the message carries no global model ('arrays')")
    load_arrays(model, arrays)
    return data, model


def _instructed(msg: Message, context: Context, node: NodeConfig) -> tuple[Instructions, Task]:
    """The message's instructions, checked against this node's policy, and their task
    (a bundled task only once it is allowed and verified: `node_task`)."""
    instr = read_instructions(msg.content.config_records.get("config", ConfigRecord()))
    policy = node_policy(node)
    if policy is not None:
        policy.check(instr)  # before anything is imported or trained
    return instr, node_task(instr, node, context.run_config, policy=policy)


def train(msg: Message, context: Context, *, simulated: SimulatedNodes | None = None) -> Message:
    """Train the received global model for one round on the local training split.

    Under central DP with client-side clipping, Flower's clipping mod clips the update to
    the norm the coordinator sent before the reply leaves the node.
    """
    node = node_config(context, simulated=simulated)
    instr, task = _instructed(msg, context, node)
    return client_clipping(
        instr.central_clipping, msg, context, lambda m, _: _train(m, node, instr, task, simulated)
    )


def _train(
    msg: Message,
    node: NodeConfig,
    instr: Instructions,
    task: Task,
    simulated: SimulatedNodes | None = None,
) -> Message:
    data, model = _prepare(msg, node, instr, task)
    if simulated is not None:  # an attacker partition of an [attack] trains on poisoned data
        data = simulated.training_data(node, data)
    config = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
    mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    seed = _round_seed(instr, server_round, node.label)
    settings = instr.settings(round_seed=seed, proximal_mu=mu)
    settings, spend = private_settings(
        instr,
        settings,
        task=task,
        model=model,
        data=data.train,
        policy=privacy_policy(node, policy=node_policy(node)),
        server_round=server_round,
        noise_seed=node.dp_noise_seed,
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
            META_KEY: _meta(node, report=True),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context, *, simulated: SimulatedNodes | None = None) -> Message:
    """Evaluate the received global model on the local validation split."""
    node = node_config(context, simulated=simulated)
    instr, task = _instructed(msg, context, node)
    data, model = _prepare(msg, node, instr, task)
    if len(data.val) == 0:
        raise FederatorError("this client has no validation examples")
    result = task.evaluate(model, data.val)
    installed = (
        installed_accuracy(node.store, run=msg.metadata.run_id, task=task, val=data.val)
        if node.store is not None
        else None
    )
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    NUM_EXAMPLES: result.num_examples,
                    "loss": result.loss,
                    "accuracy": result.accuracy,
                }
            ),
            META_KEY: _meta(node, report=True, installed=installed),
        }
    )
    return Message(content=content, reply_to=msg)


def hello(msg: Message, context: Context, *, simulated: SimulatedNodes | None = None) -> Message:
    """Introduce this node: its label and Federator version (sent once per federation), and,
    when it has an identity key, its signature over the coordinator's challenge
    (`federator.client.identity`): the proof that it is the provisioned node it names."""
    node = node_config(context, simulated=simulated)
    meta = _meta(node)
    challenge = msg.content.config_records.get("config", ConfigRecord()).get(CHALLENGE_KEY)
    if node.identity_key is not None and isinstance(challenge, bytes):
        meta[PROOF_KEY] = sign_hello(
            node.identity_key, node_id=context.node_id, nonce=challenge, label=node.label
        )
    return Message(content=RecordDict({META_KEY: meta}), reply_to=msg)


def release(msg: Message, context: Context, *, simulated: SimulatedNodes | None = None) -> Message:
    """Verify and install a signed release in this node's store; reply with the outcome.

    A refusal (bad signature, altered file, replay, another model) is an ordinary reply with
    status ``refused`` and the reason, so the coordinator can record it per node.
    """
    node = node_config(context, simulated=simulated)
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
        version = open_store(node).install(envelope, files, policy=node_policy(node))
        status, reason = DeliveryStatus.INSTALLED, ""
    except (ReleaseRefused, TaskBundleRefused) as err:
        version, status, reason = 0, DeliveryStatus.REFUSED, f"{type(err).__name__}: {err}"
    content = RecordDict(
        {
            RELEASE_KEY: ConfigRecord(
                {"status": status.value, "version": version, "reason": reason}
            ),
            META_KEY: _meta(node),
        }
    )
    return Message(content=content, reply_to=msg)


def _bound(
    handler: Callable[..., Message], simulated: SimulatedNodes | None
) -> Callable[[Message, Context], Message]:
    """``handler`` for nodes given ``simulated``: a partial of a module-level function, so
    that Ray ships it to its workers by reference, with the settings as plain data."""
    return update_wrapper(partial(handler, simulated=simulated), handler)


def build_client_app(*, simulated: SimulatedNodes | None = None) -> ClientApp:
    """A ClientApp wired to the handlers above. A deployed node reads its settings from its
    node config alone; ``simulated`` hands simulated nodes theirs (`SimulatedNodes`) — the
    app, and so the settings, travel to the Simulation Engine's workers with it."""
    train_, evaluate_ = _bound(train, simulated), _bound(evaluate, simulated)
    app = ClientApp()
    app.train(mods=[refusing, packed_io])(train_)
    app.train(SECAGG_ACTION, mods=[refusing, *secagg_mods()])(secagg_handler(train_))
    app.evaluate(mods=[refusing, packed_io])(evaluate_)
    app.query(mods=[refusing])(_bound(hello, simulated))
    app.query(RELEASE_ACTION, mods=[refusing])(_bound(release, simulated))
    return app


app = build_client_app()

__all__ = [
    "app",
    "build_client_app",
    "evaluate",
    "hello",
    "release",
    "train",
]
