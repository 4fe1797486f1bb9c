"""The client's half of SecAgg+ (see `federator.privacy.secagg`): what arrives, what is sent.

Flower's `secaggplus_mod` answers the protocol stages itself and calls the handler only in
"collect masked vectors", with the global model as legacy ``FitIns`` and a legacy ``FitRes``
expected back; it then quantises ``weight/max_weight · update``, masks it and sends only the
masked vector (the handler's arrays never leave the node). Federator sends the *update*
(local − global), which is small, so the fixed-point range ±``clipping_range`` holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from federator import UpdateRejected
from federator.client.wire import (
    SECAGG_ACTION,
    SECAGG_CLIPPING_KEY,
    SECAGG_KEYS_KEY,
    SECAGG_MAX_WEIGHT_KEY,
)

SECAGG_MESSAGE_TYPE = f"{MessageType.TRAIN}.{SECAGG_ACTION}"
_OWN_KEYS = (SECAGG_KEYS_KEY, SECAGG_CLIPPING_KEY, SECAGG_MAX_WEIGHT_KEY)


@dataclass(frozen=True, kw_only=True)
class FitInstructions:
    """The "collect masked vectors" message in Federator's terms."""

    arrays: ArrayRecord
    config: ConfigRecord
    clipping_range: float
    max_weight: float


def read_fitins(msg: Message) -> FitInstructions:
    """The named global model, the train config and the encoding limits; `UpdateRejected`
    if the message is not what `run_secagg_round` sends."""
    content = msg.content
    params = content.array_records.get("fitins.parameters")
    raw = content.config_records.get("fitins.config")
    if params is None or raw is None:
        raise UpdateRejected("the SecAgg+ message carries no legacy FitIns")
    keys, clip, max_weight = (raw.get(k) for k in _OWN_KEYS)
    if (
        not isinstance(keys, str)
        or not isinstance(clip, float)
        or not isinstance(max_weight, float)
    ):
        raise UpdateRejected("the SecAgg+ message lacks the model's array names or its limits")
    names = keys.split("\n")
    values = [params[k].numpy() for k in sorted((k for k in params if k.isdigit()), key=int)]
    if len(names) != len(values):
        raise UpdateRejected(f"{len(names)} array names for {len(values)} arrays")
    config = ConfigRecord({k: v for k, v in raw.items() if k not in _OWN_KEYS})
    return FitInstructions(
        arrays=ArrayRecord({n: Array(v) for n, v in zip(names, values, strict=True)}),
        config=config,
        clipping_range=clip,
        max_weight=max_weight,
    )


def secagg_update(
    global_arrays: ArrayRecord, local_arrays: ArrayRecord, *, clipping_range: float
) -> list[np.ndarray]:
    """``local − global`` per array (float64, in the global model's order); `UpdateRejected`
    if it is not finite or leaves ±``clipping_range``, which the encoding would silently clip."""
    update = []
    for key, g in global_arrays.items():
        if key not in local_arrays:
            raise UpdateRejected(f"the trained model has no array {key!r}")
        d = local_arrays[key].numpy().astype(np.float64) - g.numpy().astype(np.float64)
        if not bool(np.isfinite(d).all()):
            raise UpdateRejected(f"the update of {key!r} contains NaN or infinite values")
        largest = float(np.abs(d).max()) if d.size else 0.0
        if largest > clipping_range:
            raise UpdateRejected(
                f"the update of {key!r} changes a value by {largest:.4g}, outside SecAgg+'s "
                f"clipping range ±{clipping_range:g} (raise privacy.secagg.clipping_range)"
            )
        update.append(d)
    return update


def secagg_weight(num_examples: int, max_weight: float) -> int:
    """The weight a client's update gets in the mean: its examples, capped at ``max_weight``
    (a larger weight would overflow the fixed-point encoding)."""
    return max(1, min(int(num_examples), int(max_weight)))


def fitres_reply(
    msg: Message, *, update: list[np.ndarray], weight: int, metrics: Mapping[str, int | float]
) -> Message:
    """The legacy ``FitRes`` reply `secaggplus_mod` masks (it reads these exact keys)."""
    content = RecordDict(
        {
            "fitres.parameters": ArrayRecord([np.ascontiguousarray(u) for u in update]),
            "fitres.num_examples": MetricRecord({"num_examples": int(weight)}),
            "fitres.metrics": ConfigRecord(dict(metrics)),
            "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
        }
    )
    return Message(content, reply_to=msg)


def _as_plain_train(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """`secaggplus_mod` acts only on messages typed exactly ``train``; SecAgg+ messages come
    as ``train.secagg`` (so the ordinary train handler never sees them), so present them as
    ``train`` to the mod and give the reply its real type back."""
    original = msg.metadata.message_type
    msg.metadata.message_type = MessageType.TRAIN
    try:
        reply = call_next(msg, context)
    finally:
        msg.metadata.message_type = original
    reply.metadata.message_type = original
    return reply


def _drop_expired(clock: Callable[[], float]) -> Mod:
    def drop_expired(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Refuse a stage message whose TTL (= the stage timeout) ran out before it was
        handled: the server has moved on, and a stale "setup" would overwrite this node's
        keys for the round in progress. Compares the server's clock with the node's."""
        md = msg.metadata
        if clock() > md.created_at + md.ttl:
            raise UpdateRejected("stale SecAgg+ message (its stage timed out); ignored")
        return call_next(msg, context)

    return drop_expired


def secagg_mods(*, clock: Callable[[], float] = time.time) -> list[Mod]:
    """The mods for the ``train.secagg`` handler, outermost first."""
    return [_as_plain_train, _drop_expired(clock), secaggplus_mod]
