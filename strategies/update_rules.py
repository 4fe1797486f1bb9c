"""Screening updates by size and direction: a well-formed update can still be poison.

Structural screening (`federator.strategies.screening`) rejects updates that are broken —
wrong keys, shapes, dtypes, NaN. An update of the right shape scaled ×1000, or sign-flipped,
passes it, and FedAvg averages it in. `screen_updates` looks at each accepted training reply's
update, ``u_i = w_i − w_global`` over every floating-point array, and rejects:

* **size** — ``‖u_i‖₂`` above ``max_norm`` (absolute), or above ``max_norm_ratio`` × the
  median of the round's norms (with at least 3 accepted replies; a median needs company).
  The median is robust: up to half the clients may be attackers before it moves. This is the
  norm-bounding defence of Sun et al., "Can You Really Backdoor Federated Learning?" (2019),
  with the bound set relative to the round as in FLAME's median clipping (Nguyen et al., 2022);
* **direction** — cosine between ``u_i`` and the coordinate-wise median of the round's updates
  (Yin et al., 2018) below ``min_cosine``: an update pointing away from where most clients go.

Each rejection names the rule, the value and the bound, and travels with the round's other
refusals to MLflow and the display; the round goes on with the rest. Off by default: the
direction rule; on by default: the norm ratio at 5×, which rejects an update boosted ×10 and
which honest non-IID spread on the bundled configs stays far below (at most 2.03× the median:
docs/benchmarks.md, "Update screening").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord
from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass

from federator.strategies.screening import ClientReply, Rejection, Screened

MIN_REPLIES_FOR_RATIO = 3


def _off(value: object) -> object:
    """TOML's ``false`` turns a rule off (None inside); ``true`` is no bound at all."""
    if value is False:
        return None
    if value is True:
        raise ValueError("true is not a bound: give a number, or false to turn the rule off")
    return value


@dataclass(frozen=True, kw_only=True, config={"extra": "forbid"})
class UpdateRules:
    """The ``[screening]`` section: each rule a number, or ``false`` to turn it off
    (None inside)."""

    max_norm_ratio: Annotated[
        Annotated[float, Field(gt=1, allow_inf_nan=False)] | None, BeforeValidator(_off)
    ] = 5.0
    max_norm: Annotated[
        Annotated[float, Field(gt=0, allow_inf_nan=False)] | None, BeforeValidator(_off)
    ] = None
    min_cosine: Annotated[Annotated[float, Field(ge=-1, le=1)] | None, BeforeValidator(_off)] = None

    @property
    def active(self) -> bool:
        return any(r is not None for r in (self.max_norm_ratio, self.max_norm, self.min_cosine))


def _flat_update(
    reply: ClientReply, global_flat: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    (arrays,) = reply.message.content.array_records.values()
    return _flatten(arrays) - global_flat


def _flatten(arrays: ArrayRecord) -> npt.NDArray[np.float64]:
    decoded = (a.numpy() for _, a in sorted(arrays.items()))  # each array decoded once
    parts = [v.astype(np.float64, copy=False).ravel() for v in decoded if v.dtype.kind == "f"]
    return np.concatenate(parts) if parts else np.zeros(0)


def _why_too_big(norm: float, median: float, n: int, rules: UpdateRules) -> str | None:
    if rules.max_norm is not None and norm > rules.max_norm:
        return f"update norm {norm:.4g} exceeds the bound max_norm = {rules.max_norm:g}"
    ratio = rules.max_norm_ratio
    if ratio is not None and n >= MIN_REPLIES_FOR_RATIO and median > 0 and norm > ratio * median:
        return (
            f"update norm {norm:.4g} is {norm / median:.1f}× the round's median {median:.4g} "
            f"(max_norm_ratio = {ratio:g})"
        )
    return None


def _cosine(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denominator if denominator > 0 else 1.0


def screen_updates(screened: Screened, global_arrays: ArrayRecord, rules: UpdateRules) -> Screened:
    """``screened`` with the updates that break ``rules`` moved to its rejections."""
    if not rules.active or not screened.accepted:
        return screened
    global_flat = _flatten(global_arrays)
    updates = [_flat_update(r, global_flat) for r in screened.accepted]
    norms = [float(np.linalg.norm(u)) for u in updates]
    median = float(np.median(norms))
    reasons: list[str | None] = [_why_too_big(norm, median, len(norms), rules) for norm in norms]
    if rules.min_cosine is not None:
        reasons = _direction(updates, reasons, rules.min_cosine)
    kept = [r for r, why in zip(screened.accepted, reasons, strict=True) if why is None]
    refused = [
        Rejection(r.node_id, r.label, why, message=r.message)
        for r, why in zip(screened.accepted, reasons, strict=True)
        if why is not None
    ]
    return Screened(
        accepted=kept,
        rejected=sorted([*screened.rejected, *refused], key=lambda r: (r.label, r.node_id)),
        spread=max(norms) / median if len(norms) >= 2 and median > 0 else None,
    )


def _direction(
    updates: Sequence[npt.NDArray[np.float64]], reasons: list[str | None], bound: float
) -> list[str | None]:
    """Reasons after the direction rule, against the median of the updates still in."""
    alive = [u for u, why in zip(updates, reasons, strict=True) if why is None]
    if len(alive) < MIN_REPLIES_FOR_RATIO:
        return reasons
    centre = np.median(np.stack(alive), axis=0)
    out = list(reasons)
    for i, u in enumerate(updates):
        if out[i] is None and (cos := _cosine(u, centre)) < bound:
            out[i] = (
                f"update points away from the round's median update (cosine {cos:.3f} < "
                f"min_cosine = {bound:g})"
            )
    return out


__all__ = ["MIN_REPLIES_FOR_RATIO", "UpdateRules", "screen_updates"]
