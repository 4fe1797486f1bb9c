"""Aggregation strategies: Flower 1.42's strategies by name, and the wrapper Federator puts
around whichever one a federation uses (screening and reproducible sampling)."""

from federator.strategies.builtin import STRATEGIES
from federator.strategies.guarded import Guarded
from federator.strategies.registry import Registry
from federator.strategies.screening import (
    ArraySpec,
    ClientReply,
    Rejection,
    Screened,
    array_specs,
    check_arrays,
    screen_replies,
)
from federator.strategies.spec import NoParams, Sampling, StrategySpec
from federator.strategies.state import StrategyState

__all__ = [
    "STRATEGIES",
    "ArraySpec",
    "ClientReply",
    "Guarded",
    "NoParams",
    "Registry",
    "Rejection",
    "Sampling",
    "Screened",
    "StrategySpec",
    "StrategyState",
    "array_specs",
    "check_arrays",
    "screen_replies",
]
