"""A node's own settings — decided by the partner, never by the coordinator.

Who the node is, its data and policy files, where released models are installed, which public
key they must be signed with, which model it accepts and how many versions it keeps, its
privacy budget and ledger. A deployed node sets them in its node config (``--node-config
"store='/srv/federator' pinned-key='release.pub' model='digits'"``; the keys are
`NodeConfigKey`). `node_config` reads them once per message into one frozen `NodeConfig`;
a malformed value is a `ConfigError` naming the key and the value.

A simulated node's node config holds only Flower's ``partition-id`` / ``num-partitions``.
`federator simulate` gives it the rest as `SimulatedNodes`, bound into the ClientApp it runs
(`federator.client.app.build_client_app`): each node keeps its store and its privacy ledger
under its own label. No environment variable is involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar

from flwr.app import Context
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from federator import ConfigError, FederatorError, ReleaseRefused, TaskBundleRefused
from federator.client.bundle import bundle_from_run_config, import_bundled
from federator.client.instructions import Instructions
from federator.client.keys import load_public_key
from federator.client.node_policy import NodePolicy, load_policy
from federator.client.store import TASKS_FOLDER, ModelStore
from federator.client.tasks import Task, resolve_task
from federator.client.wire import NodeConfigKey
from federator.privacy.accounting import Accountant
from federator.privacy.policy import Delta, NodePrivacyPolicy
from federator.simulations.attacks.labels import LabelFlip
from federator.simulations.partition import ClientData, partition_label

DEFAULT_KEEP = 3
DEFAULT_DELTA = 1e-5


def _text(value: object) -> object:
    """Flower parses ``model=5`` as a number; a name or a path is its text all the same."""
    return str(value) if isinstance(value, int | float) else value


Text = Annotated[str, BeforeValidator(_text)]
FilePath = Annotated[Path, BeforeValidator(_text)]


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """A node's own settings, validated (see the module docstring). Unset is None; a key
    given as the empty string counts as unset."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="ignore")

    name: Annotated[Text | None, Field(alias=NodeConfigKey.NAME)] = None
    identity_key: Annotated[FilePath | None, Field(alias=NodeConfigKey.IDENTITY_KEY)] = None
    partition_id: Annotated[int | None, Field(alias=NodeConfigKey.PARTITION_ID, ge=0)] = None
    num_partitions: Annotated[int | None, Field(alias=NodeConfigKey.NUM_PARTITIONS, ge=1)] = None
    data: Annotated[FilePath | None, Field(alias=NodeConfigKey.DATA)] = None
    policy: Annotated[FilePath | None, Field(alias=NodeConfigKey.POLICY)] = None
    store: Annotated[FilePath | None, Field(alias=NodeConfigKey.STORE)] = None
    pinned_key: Annotated[FilePath | None, Field(alias=NodeConfigKey.PINNED_KEY)] = None
    model: Annotated[Text | None, Field(alias=NodeConfigKey.MODEL)] = None
    keep: Annotated[int, Field(alias=NodeConfigKey.KEEP, ge=1)] = DEFAULT_KEEP
    privacy_ledger: Annotated[FilePath | None, Field(alias=NodeConfigKey.PRIVACY_LEDGER)] = None
    max_epsilon: Annotated[float | None, Field(alias=NodeConfigKey.MAX_EPSILON, gt=0)] = None
    privacy_delta: Annotated[Delta, Field(alias=NodeConfigKey.PRIVACY_DELTA)] = DEFAULT_DELTA
    privacy_accountant: Annotated[Accountant, Field(alias=NodeConfigKey.PRIVACY_ACCOUNTANT)] = (
        Accountant.RDP
    )
    dp_noise_seed: Annotated[int | None, Field(alias=NodeConfigKey.DP_NOISE_SEED)] = None

    @property
    def label(self) -> str:
        """A stable name for this node: its configured ``name``, else its simulation
        partition (``partition-<id>``)."""
        if self.name:
            return self.name
        if self.partition_id is None:
            raise FederatorError(
                "this node has neither a 'name' nor a 'partition-id' in its node config"
            )
        return partition_label(self.partition_id)


_ADAPTER = TypeAdapter(NodeConfig)


@dataclass(frozen=True, kw_only=True)
class SimulatedNodes:
    """What every simulated node of a `federator simulate` run is given in place of a
    partner's node config: node ``partition-3`` keeps its models in ``store_root/partition-3``
    and its ledger in ``ledger_root/partition-3.json``. None leaves a setting unset (a node
    without a store refuses releases). A key the node's own config sets still wins."""

    store_root: Path | None = None
    pinned_key: Path | None = None
    model: str | None = None
    keep: int = DEFAULT_KEEP
    ledger_root: Path | None = None
    max_epsilon: float | None = None
    privacy_delta: float = DEFAULT_DELTA
    dp_noise_seed: int | None = None
    # An ``[attack]`` of kind label-flip: the attacker partitions train on flipped labels.
    label_flip: LabelFlip | None = None

    def node_config(self) -> dict[str, object]:
        """The settings every node shares, as the raw node config a partner would write."""
        shared: dict[str, object] = {
            NodeConfigKey.PINNED_KEY: self.pinned_key,
            NodeConfigKey.MODEL: self.model,
            NodeConfigKey.KEEP: self.keep,
            NodeConfigKey.MAX_EPSILON: self.max_epsilon,
            NodeConfigKey.PRIVACY_DELTA: self.privacy_delta,
            NodeConfigKey.DP_NOISE_SEED: self.dp_noise_seed,
        }
        return {k: v for k, v in shared.items() if v is not None}

    def training_data(self, config: NodeConfig, data: ClientData) -> ClientData:
        """``data`` as node ``config`` trains on it: with its training labels flipped if it is
        an attacker partition of a label-flip attack (`LabelFlip`), else as it is."""
        if self.label_flip is None or not self.label_flip.applies_to(config.partition_id):
            return data
        return self.label_flip.apply(data)

    def place(self, config: NodeConfig) -> NodeConfig:
        """``config`` with this node's own store and ledger under the roots, where unset."""
        store, ledger = config.store, config.privacy_ledger
        if store is None and self.store_root is not None:
            store = self.store_root / config.label
        if ledger is None and self.ledger_root is not None:
            ledger = self.ledger_root / f"{config.label}.json"
        return replace(config, store=store, privacy_ledger=ledger)


def parse_node_config(raw: Mapping[str, object]) -> NodeConfig:
    """A raw node config validated; `ConfigError` naming each bad key and its value."""
    given = {k: v for k, v in raw.items() if v != ""}
    try:
        return _ADAPTER.validate_python(given)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}={e['input']!r}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        raise ConfigError(f"this node's node config is invalid: {problems}") from None


def node_config(context: Context, *, simulated: SimulatedNodes | None = None) -> NodeConfig:
    """This node's settings: its node config, filled in by ``simulated`` in a simulation.
    Handlers call it once per message and pass the result down."""
    if simulated is None:
        return parse_node_config(context.node_config)
    return simulated.place(parse_node_config(simulated.node_config() | dict(context.node_config)))


def open_store(config: NodeConfig) -> ModelStore:
    """This node's model store; `ReleaseRefused` if the node is not set up to take releases."""
    if config.store is None or config.pinned_key is None or config.model is None:
        raise ReleaseRefused(
            "this node has no model store configured (store, pinned-key "
            "and model in its node config)"
        )
    return ModelStore.open(
        config.store, pinned_key=config.pinned_key, model=config.model, keep=config.keep
    )


def installed_version(config: NodeConfig) -> int:
    """The version in use on this node (0 if none or no store)."""
    if config.store is None:
        return 0
    link = config.store / "current"
    return int(Path(os.readlink(link)).name) if link.is_symlink() else 0


def node_policy(config: NodeConfig) -> NodePolicy | None:
    """The partner's policy file named by the node config key ``policy`` (None: no file)."""
    return load_policy(config.policy) if config.policy is not None else None


def node_task(
    instr: Instructions,
    node: NodeConfig,
    run_config: Mapping[str, object],
    *,
    policy: NodePolicy | None,
) -> Task:
    """The task ``instr`` names: a built-in (or one installed here) by name, or the run's
    signed task bundle — which runs only if this node's policy allows it, verified with this
    node's own pinned key, extracted into its store (`federator.client.bundle`)."""
    if instr.task_bundle is None:
        return resolve_task(instr.task)
    if policy is None:
        raise TaskBundleRefused(
            f"task {instr.task!r} comes as a bundle (sha256 {instr.task_bundle}) and this node "
            "has no policy file: it runs no bundled code without one (federator node start "
            "--policy FILE, with allowed_tasks or trust_release_key)"
        )
    if problem := policy.bundle_problem(instr.task, instr.task_bundle):
        raise TaskBundleRefused(problem)
    if node.pinned_key is None or node.store is None:
        raise TaskBundleRefused(
            "this node has no pinned release key and store (pinned-key, store in its node "
            "config): it cannot verify or keep a task bundle"
        )
    bundle = bundle_from_run_config(
        run_config,
        pinned=load_public_key(node.pinned_key),
        max_bytes=policy.max_task_bundle_bytes,
    )
    if (bundle.digest, bundle.task) != (instr.task_bundle, instr.task):
        raise TaskBundleRefused(
            f"the run's bundle holds {bundle.task!r} of sha256 {bundle.digest}, but the "
            f"instructions name {instr.task!r} of sha256 {instr.task_bundle}"
        )
    return import_bundled(bundle, node.store / TASKS_FOLDER)


def privacy_policy(config: NodeConfig, *, policy: NodePolicy | None) -> NodePrivacyPolicy:
    """This node's privacy policy: from its policy file (`node_policy`) when it has one, else
    ``max-epsilon``, ``privacy-delta``, ``privacy-accountant`` from its node config; the
    ledger is the file ``privacy-ledger``."""
    if policy is not None:
        return NodePrivacyPolicy(
            max_epsilon=policy.max_epsilon,
            delta=policy.privacy_delta,
            accountant=policy.privacy_accountant,
            ledger=config.privacy_ledger,
        )
    return NodePrivacyPolicy(
        max_epsilon=config.max_epsilon,
        delta=config.privacy_delta,
        accountant=config.privacy_accountant,
        ledger=config.privacy_ledger,
    )


__all__ = [
    "NodeConfig",
    "SimulatedNodes",
    "installed_version",
    "node_config",
    "node_policy",
    "node_task",
    "open_store",
    "parse_node_config",
    "privacy_policy",
]
