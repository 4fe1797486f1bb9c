"""Signed releases: what a federation publishes when a model becomes champion.

The layout follows the OpenSSF model-signing approach: an in-toto Statement (v1) whose
subjects are the released files with their sha256 digests, and whose predicate describes the
release (model, registry version, round, federation run, gate decision, previous version). It
is signed as a DSSE envelope with the federation's Ed25519 release key. Canonical JSON (sorted
keys, no spaces, UTF-8) makes the signed bytes reproducible.

A node accepts a release only after `open_release` (signature with the pinned key, statement
schema) and `check_files` (exactly the listed files, each with its digest) pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import SignatureInvalid
from federator.client.keys import key_id, verify

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://federator.dev/release/v1"
RELEASED_FILES = ("weights.safetensors", "lineage.json")

# On the wire a release is a `query.release` message (see `federator.client.wire`).

_Strict = ConfigDict(extra="forbid", frozen=True)
_M = TypeVar("_M", bound=BaseModel)


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of ``value`` that gets signed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature actually covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Digest(BaseModel):
    model_config = _Strict
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Subject(BaseModel):
    model_config = _Strict
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]
    digest: Digest


class Gate(BaseModel):
    model_config = _Strict
    decision: Literal["promoted"]
    reasons: list[str]
    metrics: dict[str, float]


class Predicate(BaseModel):
    """What is released: which model version, from which federation round, and why."""

    model_config = _Strict
    model: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=1)]
    previous_version: Annotated[int, Field(ge=1)] | None
    round: Annotated[int, Field(ge=1)]
    federation: str
    federation_run_id: str
    task: str
    # The sha256 of the task bundle the model was trained with (None: a built-in task); the
    # release then carries the bundle (`federator.client.bundle`) as two more files.
    task_bundle: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    created_at: str
    # After this instant (ISO 8601, UTC) no node installs the release, and a node serving it
    # knows its model is stale; None: a release signed before releases expired.
    expires_at: str | None = None
    gate: Gate


class Statement(BaseModel):
    """An in-toto v1 Statement naming the released files and the release predicate."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: Annotated[list[Subject], Field(min_length=1)]
    predicateType: Literal["https://federator.dev/release/v1"]
    predicate: Predicate


def build_statement(
    files: Mapping[str, bytes], predicate: BaseModel, *, predicate_type: str = PREDICATE_TYPE
) -> bytes:
    """Canonical statement bytes for ``files`` (name → content) and ``predicate`` (a release's
    by default; a task bundle's with its own ``predicate_type``)."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": sha256(data)}}
            for name, data in sorted(files.items())
        ],
        "predicateType": predicate_type,
        "predicate": predicate.model_dump(mode="json"),
    }
    return canonical_json(statement)


def sign_statement(statement: bytes, key: Ed25519PrivateKey) -> str:
    """A DSSE envelope (JSON text) carrying ``statement`` and its signature."""
    signature = key.sign(pae(PAYLOAD_TYPE, statement))
    return canonical_json(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(statement).decode(),
            "signatures": [
                {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}
            ],
        }
    ).decode()


def open_envelope(
    envelope: str | bytes, pinned: Ed25519PublicKey, *, what: str = "release"
) -> bytes:
    """The payload of a DSSE envelope, once its signature verifies with the pinned key.

    Raises `SignatureInvalid` for no signature, another key, an altered payload or a
    malformed envelope (``what`` names the thing in the message: a release, a task bundle).
    """
    try:
        env = json.loads(envelope)
        if not isinstance(env, dict) or env.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureInvalid("not a DSSE envelope of an in-toto statement")
        payload = base64.b64decode(env["payload"], validate=True)
        signatures = env.get("signatures") or []
    except (ValueError, KeyError, TypeError):
        raise SignatureInvalid(f"the {what} envelope is malformed") from None
    if not signatures:
        raise SignatureInvalid(f"the {what} is not signed")
    wanted = key_id(pinned)
    sigs = [s for s in signatures if isinstance(s, dict) and s.get("keyid") == wanted]
    if not sigs:
        raise SignatureInvalid(
            f"the {what} is not signed by the pinned key {wanted} "
            f"(signed by {[s.get('keyid') for s in signatures]})"
        )
    try:
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise SignatureInvalid(f"the {what} signature is malformed") from None
    verify(pinned, sig, pae(PAYLOAD_TYPE, payload))
    return payload


def parse_signed(payload: bytes, model: type[_M]) -> _M:
    """A verified payload parsed into ``model``; `SignatureInvalid` naming the bad field."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SignatureInvalid(
            f"the signed statement is malformed at {where}: {first['msg']}"
        ) from None


def open_release(envelope: str | bytes, pinned: Ed25519PublicKey) -> Statement:
    """Verify ``envelope`` with the pinned key and parse its statement.

    Raises `SignatureInvalid` for anything short of a well-formed statement signed by the
    pinned key: no signature, another key, altered payload, altered or unknown fields.
    """
    return parse_signed(open_envelope(envelope, pinned), Statement)


def check_files(statement: Statement, files: Mapping[str, bytes]) -> None:
    """`SignatureInvalid` unless ``files`` are exactly the statement's subjects, intact."""
    listed = {s.name: s.digest.sha256 for s in statement.subject}
    missing = sorted(set(listed) - set(files))
    extra = sorted(set(files) - set(listed))
    if missing:
        raise SignatureInvalid(f"the release is missing {missing}")
    if extra:
        raise SignatureInvalid(f"the release carries files it does not list: {extra}")
    for name, expected in listed.items():
        if sha256(files[name]) != expected:
            raise SignatureInvalid(
                f"{name} does not match its signed sha256 digest (altered or truncated)"
            )
