"""A node proves which provisioned node it is: it signs the coordinator's hello challenge.

Flower's node authentication tells the SuperLink that a node holds *a* registered key, but a
ServerApp sees only random node ids; the name a node reports is its own say-so. So the
coordinator's hello carries a fresh random challenge, and a deployed node answers with an
ECDSA signature, made with its kit's ``node.key`` (the very key Flower authenticates it
with), over a statement binding the challenge, the Flower node id the challenge was sent to
and the name it claims. The coordinator checks it against the public keys in its own kit
(``nodes/<name>.pub``): the name whose key verifies is the node's label; a node that proves
no name, or another name than it claims, takes no part (`federator.server.federation.nodes`).

A fresh 32-byte nonce per node and run makes a recorded proof useless later; binding the
node id makes it useless for another node of the same run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from federator.client.certs import load_node_private

NONCE_BYTES = 32
_DOMAIN = b"federator-hello/v1\n"
_HASH = hashes.SHA384()


def hello_statement(*, node_id: int, nonce: bytes, label: str) -> bytes:
    """The bytes a node signs: the challenge, the node id it was sent to, the claimed name."""
    body = {"label": label, "node": node_id, "nonce": nonce.hex()}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_hello(
    key: Path | ec.EllipticCurvePrivateKey, *, node_id: int, nonce: bytes, label: str
) -> bytes:
    """This node's proof: a DER ECDSA signature over `hello_statement` with ``key`` (its
    kit's ``node.key``, or the loaded key)."""
    private = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_node_private(key)
    statement = hello_statement(node_id=node_id, nonce=nonce, label=label)
    return private.sign(statement, ec.ECDSA(_HASH))


def proves(
    public: ec.EllipticCurvePublicKey, proof: bytes, *, node_id: int, nonce: bytes, label: str
) -> bool:
    """Whether ``proof`` is ``public``'s signature over the statement for these values."""
    statement = hello_statement(node_id=node_id, nonce=nonce, label=label)
    try:
        public.verify(proof, statement, ec.ECDSA(_HASH))
    except (InvalidSignature, ValueError):  # ValueError: not a DER signature at all
        return False
    return True


def prover(
    keys: Mapping[str, ec.EllipticCurvePublicKey],
    proof: bytes,
    *,
    node_id: int,
    nonce: bytes,
    label: str,
) -> str | None:
    """The name in ``keys`` whose key made ``proof`` for the claimed ``label``, if any.

    The claimed name's key is tried first; the others only to tell a node that claims
    another partner's name (its proof verifies under its own key, not the claimed one)
    from one that holds no provisioned key at all. The statement always carries the
    *claimed* label, so a proof never verifies for a name it did not claim."""
    order = ([label] if label in keys else []) + [n for n in keys if n != label]
    for name in order:
        if proves(keys[name], proof, node_id=node_id, nonce=nonce, label=label):
            return name
    return None


__all__ = ["NONCE_BYTES", "hello_statement", "prover", "proves", "sign_hello"]
