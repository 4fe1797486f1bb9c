"""The adversary of a simulation: the attackers' training replies, poisoned at the coordinator.

Threat model. The attackers are a fixed minority of the simulated clients (`Attack.attackers`)
that collude and are omniscient, the standard assumption of the Byzantine-robustness
literature (Blanchard et al. 2017; Baruch et al. 2019; Fang et al. 2020): each round they see
every sampled client's honest update — "a little is enough" needs the honest updates'
coordinate-wise mean and spread — and they know the aggregation rule. They train honestly
(so each has the update it would have sent) and then send a poisoned one instead.

Where it happens. `Adversary.poison` rewrites the attackers' replies as they arrive, *before*
screening and aggregation: update screening and the robust aggregators see the poisoned
updates exactly as they would see them from hostile nodes, and nothing in the coordinator
knows which replies were rewritten. Only the round loop's record says which attackers took
part (`Adversary.attackers_in`), so that results can be checked. Label flipping is not done
here: it poisons the attackers' training data on the nodes themselves
(`federator.simulations.attacks.labels`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from federator import UpdateRejected
from federator.simulations.attacks import poison
from federator.simulations.attacks.poison import Vector
from federator.simulations.attacks.settings import Attack, AttackKind
from federator.strategies.screening import ArraySpec, array_specs, check_arrays, reply_label


@dataclass(frozen=True)
class _Layout:
    """The floating-point arrays of a model, in a fixed order: how updates are flattened."""

    keys: tuple[str, ...]
    specs: dict[str, ArraySpec]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> _Layout:
        specs = array_specs(arrays)
        keys = tuple(sorted(k for k, a in arrays.items() if a.numpy().dtype.kind == "f"))
        return cls(keys, specs)

    def flatten(self, arrays: ArrayRecord) -> Vector:
        parts = [arrays[k].numpy().astype(np.float64).ravel() for k in self.keys]
        return np.concatenate(parts) if parts else np.zeros(0)

    def rebuild(self, arrays: ArrayRecord, flat: Vector) -> ArrayRecord:
        """``arrays`` with its floating-point arrays replaced by ``flat`` (same shapes and
        dtypes); the other arrays are kept as they were."""
        out = dict(arrays.items())
        offset = 0
        for key in self.keys:
            spec = self.specs[key]
            size = int(np.prod(spec.shape, dtype=np.int64))
            chunk = flat[offset : offset + size].reshape(spec.shape).astype(spec.dtype)
            out[key] = Array(np.ascontiguousarray(chunk))
            offset += size
        return ArrayRecord(out)


def _update_record(msg: Message, layout: _Layout) -> tuple[str, ArrayRecord] | None:
    """The reply's one well-formed ArrayRecord and its key (None: screening will refuse it,
    and the adversary leaves it alone)."""
    if msg.has_error() or not msg.has_content():
        return None
    records = list(msg.content.array_records.items())
    if len(records) != 1:
        return None
    key, arrays = records[0]
    try:
        check_arrays(arrays, layout.specs)
    except UpdateRejected:
        return None
    return key, arrays


class Adversary:
    """The colluding attackers of ``attack`` (see the module docstring)."""

    def __init__(self, attack: Attack) -> None:
        self.attack = attack
        self._labels = frozenset(attack.labels)

    def attackers_in(self, replies: Iterable[Message]) -> tuple[str, ...]:
        """The attackers' labels among ``replies`` (sorted): who attacked this round."""
        return self.among(reply_label(m) for m in replies)

    def among(self, labels: Iterable[str]) -> tuple[str, ...]:
        """The attackers' labels among ``labels`` (sorted)."""
        return tuple(sorted(set(labels) & self._labels))

    def poison(
        self, server_round: int, global_arrays: ArrayRecord, replies: Sequence[Message]
    ) -> Sequence[Message]:
        """``replies`` with each attacker's update replaced by its poisoned one (in place).
        Label flipping leaves the replies alone: its poison is in the training data."""
        if not self.attack.kind.poisons_updates:
            return replies
        layout = _Layout.of(global_arrays)
        base = layout.flatten(global_arrays)
        formed = [(m, found) for m in replies if (found := _update_record(m, layout))]
        updates = [layout.flatten(arrays) - base for _, (_, arrays) in formed]
        honest = np.stack(updates) if updates else np.zeros((0, base.size))
        for (msg, (key, arrays)), update in zip(formed, updates, strict=True):
            label = reply_label(msg)
            if label in self._labels:
                sent = self._poisoned(update, honest, server_round=server_round, label=label)
                msg.content[key] = layout.rebuild(arrays, base + sent)
        return replies

    def _poisoned(
        self, update: Vector, honest: np.ndarray, *, server_round: int, label: str
    ) -> Vector:
        a = self.attack
        if a.kind is AttackKind.SIGN_FLIP:
            return poison.sign_flip(update)
        if a.kind is AttackKind.SCALE:
            assert a.scale is not None
            return poison.scaled(update, a.scale)
        if a.kind is AttackKind.GAUSSIAN:
            assert a.sigma is not None
            return poison.gaussian(update.size, a.sigma, self._rng(server_round, label))
        assert a.kind is AttackKind.LITTLE_IS_ENOUGH
        assert a.z is not None
        return poison.little_is_enough(honest, a.z)

    def _rng(self, server_round: int, label: str) -> np.random.Generator:
        """A generator per (attack seed, round, attacker): the same noise on every run, and
        after a resume."""
        digest = hashlib.sha256(f"{self.attack.seed}:{server_round}:{label}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "big"))


__all__ = ["Adversary"]
