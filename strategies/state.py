"""A Flower strategy's own state as a state dict: the attributes its spec names.

Some strategies carry state from round to round — FedAdam and FedYogi their first and second
moments (``m_t``, ``v_t``: dicts of arrays by model key). A registered strategy's spec names
those attributes (`StrategySpec.state_attrs`); `StrategyState` is the one place that reads and
writes them, so that a checkpoint can carry them and a resumed federation continue exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy


class StrategyState:
    """The named dict-of-array attributes of ``strategy`` (unset ones are left out)."""

    def __init__(self, strategy: Strategy, attrs: Sequence[str]) -> None:
        self._strategy = strategy
        self._attrs = tuple(attrs)

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """A copy of each set attribute, by attribute name and key."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for attr in self._attrs:
            values = getattr(self._strategy, attr, None)
            if values:
                out[attr] = {str(k): np.array(v) for k, v in values.items()}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put saved attributes back on the strategy; attributes not saved become unset.
        `ValueError` for an attribute this strategy does not have."""
        unknown = sorted(set(state) - set(self._attrs))
        if unknown:
            raise ValueError(f"no strategy state named {unknown} (this one has {self._attrs})")
        for attr in self._attrs:
            values = {str(k): np.array(v) for k, v in (state.get(attr) or {}).items()}
            setattr(self._strategy, attr, values or None)
