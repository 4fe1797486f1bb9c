"""Label flipping: attackers that train honestly on poisoned labels (data poisoning).

Each attacker node relabels its own training split ``y → C − 1 − y`` (C classes) before it
trains, and then follows the protocol to the letter: its update is well-formed, of an
ordinary size, and wrong. This is the label-flipping attack of Biggio et al. 2012
("Poisoning Attacks against Support Vector Machines") as taken to federated learning by
Tolpegin et al. 2020 ("Data Poisoning Attacks Against Federated Learning Systems"), which
flips one class into another; flipping every class at once, as here, is its strongest form.
Its validation split is left alone, so the node's own evaluations stay honest.

Simulation only: `federator simulate` hands it to the attacker partitions' nodes through
`federator.client.node.SimulatedNodes`; no deployed node ever has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from federator.simulations.datasets import ArrayData
from federator.simulations.partition import ClientData


def flip_labels(y: npt.NDArray[np.int64], num_classes: int) -> npt.NDArray[np.int64]:
    """``C − 1 − y``: a bijection of the classes without fixed points (for even C), and
    its own inverse."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} to be flipped")
    flipped: npt.NDArray[np.int64] = (num_classes - 1 - y).astype(y.dtype)
    return flipped


@dataclass(frozen=True, kw_only=True)
class LabelFlip:
    """Which simulation partitions flip their training labels, among ``num_classes``."""

    partitions: frozenset[int]
    num_classes: int

    def applies_to(self, partition_id: int | None) -> bool:
        return partition_id is not None and partition_id in self.partitions

    def apply(self, data: ClientData) -> ClientData:
        """``data`` with its training labels flipped (validation untouched)."""
        train = ArrayData(data.train.x, flip_labels(data.train.y, self.num_classes))
        return ClientData(train=train, val=data.val)


__all__ = ["LabelFlip", "flip_labels"]
