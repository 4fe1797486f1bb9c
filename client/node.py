"""A node's own settings — decided by the partner, never by the coordinator.

Where released models are installed, which public key they must be signed with, which model
this node accepts and how many versions it keeps. A deployed node sets them in its node config
(``--node-config "store='/srv/federator' pinned-key='release.pub' model='digits'"``);
simulated nodes get them from ``FEDERATOR_NODE_*`` environment variables that
``federator simulate`` sets before the clients start (each node under its own sub-folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from federator import ConfigError, ReleaseRefused
from federator.client.node_policy import NodePolicy, load_policy
from federator.client.store import ModelStore
from federator.client.wire import NodeConfigKey
from federator.privacy.accounting import Accountant
from federator.privacy.policy import NodePrivacyPolicy

ENV_STORE_ROOT = "FEDERATOR_NODE_STORE_ROOT"
ENV_PINNED_KEY = "FEDERATOR_NODE_PINNED_KEY"
ENV_MODEL = "FEDERATOR_NODE_MODEL"
ENV_KEEP = "FEDERATOR_NODE_KEEP"
ENV_LEDGER_ROOT = "FEDERATOR_NODE_LEDGER_ROOT"
ENV_MAX_EPSILON = "FEDERATOR_NODE_MAX_EPSILON"
ENV_PRIVACY_DELTA = "FEDERATOR_NODE_PRIVACY_DELTA"
ENV_DP_NOISE_SEED = "FEDERATOR_NODE_DP_NOISE_SEED"


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    """Where and what this node installs."""

    store: Path | None
    pinned_key: Path | None
    model: str | None
    keep: int = 3


def node_settings(context: Context, label: str) -> NodeSettings:
    """Settings from the node config, else from the simulation environment."""
    cfg = context.node_config

    def text(key: str, env: str) -> str | None:
        value = cfg.get(key, os.environ.get(env))
        return str(value) if value not in (None, "") else None

    store = text(NodeConfigKey.STORE, "")
    if store is None and (root := os.environ.get(ENV_STORE_ROOT)):
        store = str(Path(root) / label)
    key = text(NodeConfigKey.PINNED_KEY, ENV_PINNED_KEY)
    keep = text("keep", ENV_KEEP)
    return NodeSettings(
        store=Path(store) if store else None,
        pinned_key=Path(key) if key else None,
        model=text(NodeConfigKey.MODEL, ENV_MODEL),
        keep=int(keep) if keep else 3,
    )


def open_store(settings: NodeSettings) -> ModelStore:
    """This node's model store; `ReleaseRefused` if the node is not set up to take releases."""
    if settings.store is None or settings.pinned_key is None or settings.model is None:
        raise ReleaseRefused(
            "this node has no model store configured (store, pinned-key "
            "and model in its node config)"
        )
    return ModelStore.open(
        settings.store, pinned_key=settings.pinned_key, model=settings.model, keep=settings.keep
    )


def installed_version(settings: NodeSettings) -> int:
    """The version in use on this node (0 if none or no store)."""
    if settings.store is None:
        return 0
    link = settings.store / "current"
    return int(Path(os.readlink(link)).name) if link.is_symlink() else 0


def _setting(context: Context, key: str, env: str) -> str | None:
    value = context.node_config.get(key, os.environ.get(env) if env else None)
    return str(value) if value not in (None, "") else None


def node_policy(context: Context) -> NodePolicy | None:
    """The partner's policy file named by the node config key ``policy`` (None: no file)."""
    path = _setting(context, NodeConfigKey.POLICY, "")
    return load_policy(Path(path)) if path else None


def privacy_policy(context: Context, label: str) -> NodePrivacyPolicy:
    """This node's privacy policy: from its policy file (`node_policy`) when it has one, else
    ``max-epsilon``, ``privacy-delta``, ``privacy-accountant`` from its node config; the
    ledger is the file ``privacy-ledger``. Simulated nodes read ``FEDERATOR_NODE_MAX_EPSILON``
    / ``_PRIVACY_DELTA`` and keep their ledger under ``FEDERATOR_NODE_LEDGER_ROOT/<label>.json``.
    Malformed values are a `ConfigError`."""
    ledger = _setting(context, NodeConfigKey.PRIVACY_LEDGER, "")
    if ledger is None and (root := os.environ.get(ENV_LEDGER_ROOT)):
        ledger = str(Path(root) / f"{label}.json")
    if (policy := node_policy(context)) is not None:
        return NodePrivacyPolicy(
            max_epsilon=policy.max_epsilon,
            delta=policy.privacy_delta,
            accountant=policy.privacy_accountant,
            ledger=Path(ledger) if ledger else None,
        )
    max_eps = _setting(context, NodeConfigKey.MAX_EPSILON, ENV_MAX_EPSILON)
    delta = _setting(context, NodeConfigKey.PRIVACY_DELTA, ENV_PRIVACY_DELTA)
    accountant = _setting(context, NodeConfigKey.PRIVACY_ACCOUNTANT, "")
    try:
        return NodePrivacyPolicy(
            max_epsilon=float(max_eps) if max_eps is not None else None,
            delta=float(delta) if delta is not None else 1e-5,
            accountant=Accountant(accountant) if accountant else Accountant.RDP,
            ledger=Path(ledger) if ledger else None,
        )
    except ValueError as err:
        raise ConfigError(f"this node's privacy settings are invalid: {err}") from None


def dp_noise_seed(context: Context) -> int | None:
    """A fixed seed for DP noise — for reproducible research in simulation only. Unset (the
    default), noise comes from the operating system's randomness."""
    seed = _setting(context, NodeConfigKey.DP_NOISE_SEED, ENV_DP_NOISE_SEED)
    return int(seed) if seed is not None else None
