"""Deployment profiles: defaults for who takes part in a round and how long it waits.

* ``cross-silo`` — a few organisations with reliable servers (hospitals, banks): every node
  trains and evaluates every round, a round needs every node's update, and waits up to an
  hour for slow sites. A missing site skips the round rather than averaging without it.
* ``edge`` — many devices that come and go: half of the connected nodes are sampled, a round
  needs updates from half of those, waits two minutes, and whatever arrives later is
  discarded (every message expires with the round, see `federator.server.federation.exchange`).

A profile only fills in ``[strategy]`` keys the config leaves out; anything set explicitly
wins. Without ``[deployment] profile`` the plain defaults apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from federator.server.plan.config import Profile

CROSS_SILO_TIMEOUT = 3600.0
EDGE_TIMEOUT = 120.0
EDGE_FRACTION = 0.5


def profile_defaults(profile: Profile, *, clients: int) -> dict[str, Any]:
    """The ``[strategy]`` values ``profile`` implies for ``clients`` nodes."""
    if profile is Profile.CROSS_SILO:
        return {
            "fraction_train": 1.0,
            "fraction_evaluate": 1.0,
            "min_available_nodes": clients,
            "min_train_nodes": clients,
            "min_replies": clients,
            "round_timeout": CROSS_SILO_TIMEOUT,
        }
    sampled = max(1, math.ceil(EDGE_FRACTION * clients))
    return {
        "fraction_train": EDGE_FRACTION,
        "fraction_evaluate": EDGE_FRACTION,
        "min_available_nodes": sampled,
        "min_train_nodes": sampled,
        "min_evaluate_nodes": min(sampled, 2),
        "min_replies": max(1, math.ceil(EDGE_FRACTION * sampled)),
        "round_timeout": EDGE_TIMEOUT,
    }


def apply_profile(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with its profile's defaults filled into ``[strategy]`` (a copy; unchanged
    when there is no profile or the values it needs are not valid yet — validation reports
    those)."""
    out = dict(raw)
    deployment = out.get("deployment")
    if not isinstance(deployment, Mapping) or "profile" not in deployment:
        return out
    clients = (out.get("data") or {}).get("clients")
    try:
        profile = Profile(deployment["profile"])
    except ValueError:
        return out
    if not isinstance(clients, int) or isinstance(clients, bool) or clients < 1:
        return out
    strategy = dict(out.get("strategy") or {})
    for key, value in profile_defaults(profile, clients=clients).items():
        strategy.setdefault(key, value)
    out["strategy"] = strategy
    return out
