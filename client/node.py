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

from federator import ReleaseRefused
from federator.client.store import ModelStore

ENV_STORE_ROOT = "FEDERATOR_NODE_STORE_ROOT"
ENV_PINNED_KEY = "FEDERATOR_NODE_PINNED_KEY"
ENV_MODEL = "FEDERATOR_NODE_MODEL"
ENV_KEEP = "FEDERATOR_NODE_KEEP"


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

    store = text("store", "")
    if store is None and (root := os.environ.get(ENV_STORE_ROOT)):
        store = str(Path(root) / label)
    key = text("pinned-key", ENV_PINNED_KEY)
    keep = text("keep", ENV_KEEP)
    return NodeSettings(
        store=Path(store) if store else None,
        pinned_key=Path(key) if key else None,
        model=text("model", ENV_MODEL),
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
