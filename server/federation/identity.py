"""Which provisioned node a connected node is: the coordinator's side of the hello proof.

A deployment submitted with ``federator run --kit DIR`` names the coordinator kit's
``nodes/`` folder in its run config; its ``<name>.pub`` keys are the only names a node may
take. Each node's hello reply must carry a signature over the challenge sent to it
(`federator.client.identity`); `NodeKeys.admit` turns a reply into a `Verdict`: the proven
name, or why the node takes no part (`Refusal`). A simulation (or a run submitted without a
kit) has no `NodeKeys`: labels are trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from federator import ConfigError
from federator.client.certs import load_node_public
from federator.client.identity import prover


class Refusal(StrEnum):
    """Why a node takes no part: what its hello failed to show."""

    NO_PROOF = "sent no proof of its node key"
    UNKNOWN_KEY = "its proof verifies with no provisioned node key"
    OTHER_KEY = "holds the node key of {proven}"
    TAKEN = "{claimed} is already connected as another node"


Naming = Callable[[str], str]


@dataclass(frozen=True)
class Verdict:
    """A node's hello judged: the name it ``claimed``, the one it ``proved`` (None: none)
    and, if it takes no part, the `Refusal`."""

    claimed: str
    proved: str | None
    refusal: Refusal | None = None

    @property
    def label(self) -> str | None:
        """The node's label: the name it proved, if it is admitted."""
        return self.proved if self.refusal is None else None

    def reason(self, name: Naming = repr) -> str:
        """Why it was refused, with each node named by ``name`` (the coordinator's log uses
        the names; MLflow gets pseudonyms)."""
        if self.refusal is None:
            return ""
        why = self.refusal.value.format(claimed=name(self.claimed), proven=name(self.proved or ""))
        return f"claims to be {name(self.claimed)}; {why}"


@dataclass(frozen=True)
class NodeKeys:
    """The provisioned nodes' public keys, by name (from the coordinator kit)."""

    keys: Mapping[str, ec.EllipticCurvePublicKey]

    def admit(self, *, node_id: int, nonce: bytes, claimed: str, proof: object) -> Verdict:
        """What ``node_id`` proved by signing ``nonce`` while claiming ``claimed``.

        Refused: no proof (a node without its kit's key, or not a Federator node), a proof
        no provisioned key made, or a proof by one partner's key claiming another's name."""
        if not isinstance(proof, bytes) or not proof:
            return Verdict(claimed, None, Refusal.NO_PROOF)
        proven = prover(self.keys, proof, node_id=node_id, nonce=nonce, label=claimed)
        if proven is None:
            return Verdict(claimed, None, Refusal.UNKNOWN_KEY)
        if proven != claimed:
            return Verdict(claimed, proven, Refusal.OTHER_KEY)
        return Verdict(claimed, proven)


def load_node_keys(folder: Path) -> NodeKeys:
    """The ``<name>.pub`` keys in ``folder`` (a coordinator kit's ``nodes/``, which
    ``federator run`` checked with the rest of the kit before submitting); `ConfigError`
    naming a file that is not an OpenSSH ECDSA key, or a folder without keys."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: the coordinator kit's node keys are not there")
    keys = {p.stem: load_node_public(p) for p in sorted(folder.glob("*.pub"))}
    if not keys:
        raise ConfigError(f"{folder}: holds no node keys (<name>.pub)")
    return NodeKeys(keys)


__all__ = ["NodeKeys", "Refusal", "Verdict", "load_node_keys"]
