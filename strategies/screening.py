"""Reply screening: check every client reply before any strategy aggregates it.

Flower's strategies assume well-formed replies: one malformed update (a missing key, a wrong
shape, a NaN) raises for the whole round or silently poisons the average. Screening rejects
just that reply, with a reason a person can act on, and lets the round go on with the rest.
It also puts accepted replies in a stable order, so aggregation (a floating-point sum) gives
the same bits for the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from federator import UpdateRejected
from federator.client.wire import LABEL_KEY, META_KEY, NUM_EXAMPLES


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one named array of the global model."""

    shape: tuple[int, ...]
    dtype: str


def array_specs(arrays: ArrayRecord) -> dict[str, ArraySpec]:
    """The specs of the arrays in ``arrays`` (what every update must match)."""
    return {k: ArraySpec(tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


@dataclass(frozen=True)
class ClientReply:
    """An accepted reply: who sent it, how many examples it stands for, its scalar metrics."""

    node_id: int
    label: str
    num_examples: int
    metrics: Mapping[str, float]
    message: Message = field(repr=False, compare=False)


@dataclass(frozen=True)
class Rejection:
    """A refused reply and why. ``message``: the reply itself, when there was one (what else
    it carries — a node's serving report — is still read; its update is not)."""

    node_id: int
    label: str
    reason: str
    message: Message | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Screened:
    """Outcome of screening one round's replies. ``accepted`` is in a stable order."""

    accepted: list[ClientReply]
    rejected: list[Rejection]
    # The largest update norm ÷ the round's median, before the size rules (update screening
    # on, at least 2 updates): how far apart honest clients are, to set the bound by.
    spread: float | None = None

    def messages(self) -> list[Message]:
        """The accepted messages, in the stable order."""
        return [r.message for r in self.accepted]


def reply_label(msg: Message) -> str:
    """The label a node gave itself in the reply's ``federator`` ConfigRecord, if any."""
    if not msg.has_content():
        return ""
    meta = msg.content.config_records.get(META_KEY)
    value = meta.get(LABEL_KEY) if isinstance(meta, ConfigRecord) else None
    return value if isinstance(value, str) else ""


def _only_metric_record(msg: Message) -> MetricRecord:
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise UpdateRejected(f"expected exactly one MetricRecord, got {len(records)}")
    return records[0]


def _scalar_metrics(record: MetricRecord) -> tuple[int, dict[str, float]]:
    if NUM_EXAMPLES not in record:
        raise UpdateRejected(f"the MetricRecord has no {NUM_EXAMPLES!r}")
    raw_n = record[NUM_EXAMPLES]
    if isinstance(raw_n, bool) or not isinstance(raw_n, int | float) or raw_n != int(raw_n):
        raise UpdateRejected(f"{NUM_EXAMPLES!r} must be a whole number, got {raw_n!r}")
    if raw_n <= 0:
        raise UpdateRejected(f"{NUM_EXAMPLES!r} must be positive, got {int(raw_n)}")
    metrics: dict[str, float] = {}
    for key, value in record.items():
        if key == NUM_EXAMPLES:
            continue
        if isinstance(value, list):
            raise UpdateRejected(f"metric {key!r} is a list; only scalar metrics are accepted")
        if not math.isfinite(float(value)):
            raise UpdateRejected(f"metric {key!r} is not finite ({value})")
        metrics[key] = float(value)
    return int(raw_n), metrics


def check_arrays(arrays: ArrayRecord, expected: Mapping[str, ArraySpec]) -> None:
    """Raise `UpdateRejected` unless ``arrays`` has exactly the expected finite arrays."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise UpdateRejected(
            f"array keys differ from the global model: missing {missing}, unexpected {extra}"
        )
    for key, spec in expected.items():
        try:
            value = arrays[key].numpy()
        except (TypeError, ValueError) as err:
            raise UpdateRejected(f"array {key!r} cannot be decoded: {err}") from None
        if tuple(value.shape) != spec.shape:
            raise UpdateRejected(
                f"array {key!r} has shape {tuple(value.shape)}, expected {spec.shape}"
            )
        if str(value.dtype) != spec.dtype:
            raise UpdateRejected(f"array {key!r} has dtype {value.dtype}, expected {spec.dtype}")
        if value.dtype.kind in "fc" and not bool(np.isfinite(value).all()):
            raise UpdateRejected(f"array {key!r} contains NaN or infinite values")


def _screen_one(msg: Message, expected: Mapping[str, ArraySpec] | None) -> ClientReply:
    if msg.has_error():
        raise UpdateRejected(f"client reported an error: {msg.error.reason}")
    record = _only_metric_record(msg)
    n, metrics = _scalar_metrics(record)
    if expected is not None:
        array_records = list(msg.content.array_records.values())
        if len(array_records) != 1:
            raise UpdateRejected(f"expected exactly one ArrayRecord, got {len(array_records)}")
        check_arrays(array_records[0], expected)
    return ClientReply(
        node_id=msg.metadata.src_node_id,
        label=reply_label(msg),
        num_examples=n,
        metrics=metrics,
        message=msg,
    )


def screen_replies(
    replies: Iterable[Message], *, expected: Mapping[str, ArraySpec] | None
) -> Screened:
    """Split replies into accepted and rejected.

    ``expected`` is the array specs of the global model for training replies (each must carry
    one matching ArrayRecord) and ``None`` for evaluation replies (metrics only). Accepted
    replies are sorted by (label, node id) and trimmed to the metric keys they all share, so
    Flower's consistency check passes for every strategy.
    """
    accepted: list[ClientReply] = []
    rejected: list[Rejection] = []
    for msg in replies:
        try:
            accepted.append(_screen_one(msg, expected))
        except UpdateRejected as err:
            rejected.append(
                Rejection(msg.metadata.src_node_id, reply_label(msg), err.reason, message=msg)
            )
    accepted.sort(key=lambda r: (r.label, r.node_id))
    if accepted:
        shared = set.intersection(*(set(r.metrics) for r in accepted))
        for reply in accepted:
            record = _only_metric_record(reply.message)
            for key in [k for k in record if k != NUM_EXAMPLES and k not in shared]:
                del record[key]
    rejected.sort(key=lambda r: (r.label, r.node_id))
    return Screened(accepted=accepted, rejected=rejected)
