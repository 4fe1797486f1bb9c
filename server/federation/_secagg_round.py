"""The train phase of a round under SecAgg+: the coordinator learns only the mean update.

The strategy still samples the nodes (reproducibly, through `Guarded`) and builds the train
config; instead of exchanging train messages and aggregating updates it can see, the round
runs one SecAgg+ protocol round (`federator.privacy.secagg`) over the sampled nodes, and the
new global model is ``global + weighted mean of the survivors' updates`` — which is FedAvg's
result when every sampled node survives. Too few survivors abort the protocol: the round is
skipped with the reason, and nothing is registered for it.

What the coordinator still sees per client, in plaintext: the number of examples and the
training metrics (ε spent under local DP, loss), which MLflow shows as for any round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from federator.client.wire import NUM_EXAMPLES
from federator.privacy.secagg import (
    SecAggParams,
    SecAggResult,
    SecAggWorkflow,
    SendReceive,
    run_secagg_round,
)
from federator.server.federation.nodes import NodeDirectory
from federator.server.plan.config import SecAggSection
from federator.strategies.screening import ClientReply, Rejection, Screened


@dataclass(frozen=True, kw_only=True)
class SecAggTrained:
    """The train phase's outcome: the new global model (``None``: skip, ``skip_reason``
    says why), the clients' averaged training metrics, and who took part or dropped."""

    arrays: ArrayRecord | None
    metrics: MetricRecord | None
    screened: Screened
    skip_reason: str | None


def apply_mean(arrays: ArrayRecord, mean: Sequence[np.ndarray]) -> ArrayRecord:
    """``arrays + mean`` per array, computed in float64 and returned in each array's dtype
    (integer buffers are rounded), so clients receive the model they expect."""
    if len(mean) != len(arrays):
        raise ValueError(f"{len(mean)} mean arrays for a model of {len(arrays)}")
    out: dict[str, Array] = {}
    for (key, array), delta in zip(arrays.items(), mean, strict=True):
        g = array.numpy()
        new = g.astype(np.float64) + np.asarray(delta, dtype=np.float64).reshape(g.shape)
        if g.dtype.kind in "iub":
            new = np.rint(new)
        out[key] = Array(np.ascontiguousarray(new.astype(g.dtype)))
    return ArrayRecord(out)


def _scalars(metrics: Mapping[str, object]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _num_examples(metrics: Mapping[str, object], weight: int) -> int:
    raw = metrics.get(NUM_EXAMPLES)
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else weight


def _mean_metrics(replies: Sequence[ClientReply]) -> MetricRecord:
    """Weighted (by examples) mean of the metrics every client reported, as FedAvg does."""
    shared = set.intersection(*(set(r.metrics) for r in replies)) if replies else set()
    total = sum(r.num_examples for r in replies)
    return MetricRecord(
        {
            key: math.fsum(r.metrics[key] * r.num_examples for r in replies) / total
            for key in sorted(shared)
        }
    )


class SecAggTraining:
    """Runs the train phase of each round as one SecAgg+ round (see the module docstring).

    Each stage waits at most ``plan.timeout`` seconds (``round_timeout`` when unset); it must
    cover local training, which happens inside the "collect masked vectors" stage.
    """

    def __init__(
        self,
        plan: SecAggSection,
        *,
        grid: Grid,
        exchange: SendReceive,
        directory: NodeDirectory,
        round_timeout: float,
        workflow: SecAggWorkflow,
    ) -> None:
        self._grid = grid
        self._workflow = workflow
        self._exchange = exchange
        self._directory = directory
        timeout = plan.timeout if plan.timeout is not None else round_timeout
        self.params = SecAggParams(**{**plan.model_dump(), "timeout": timeout})

    def __call__(
        self, server_round: int, arrays: ArrayRecord, train_msgs: Sequence[Message]
    ) -> SecAggTrained:
        """Train the nodes the strategy sampled (``train_msgs``) under SecAgg+."""
        if not train_msgs:
            return SecAggTrained(
                arrays=None,
                metrics=None,
                screened=Screened(accepted=[], rejected=[]),
                skip_reason="the strategy sampled no clients",
            )
        config = train_msgs[0].content.config_records.get("config", ConfigRecord())
        result = run_secagg_round(
            grid=self._grid,
            exchange=self._exchange,
            server_round=server_round,
            node_ids=[m.metadata.dst_node_id for m in train_msgs],
            arrays=[a.numpy() for a in arrays.values()],
            keys=list(arrays.keys()),
            config={k: v for k, v in config.items() if not isinstance(v, list)},
            params=self.params,
            workflow=self._workflow,
        )
        screened = self._screened(result)
        if result.mean is None:
            return SecAggTrained(
                arrays=None, metrics=None, screened=screened, skip_reason=result.abort_reason
            )
        return SecAggTrained(
            arrays=apply_mean(arrays, result.mean),
            metrics=_mean_metrics(screened.accepted),
            screened=screened,
            skip_reason=None,
        )

    def _screened(self, result: SecAggResult) -> Screened:
        label = {n: self._directory.entry(n).label for n in result.dropped}
        accepted = [
            ClientReply(
                node_id=s.node_id,
                label=self._directory.entry(s.node_id).label,
                num_examples=_num_examples(s.metrics, s.weight),
                metrics=_scalars({k: v for k, v in s.metrics.items() if k != NUM_EXAMPLES}),
                message=s.reply,
            )
            for s in result.survivors
        ]
        rejected = [
            Rejection(node, label[node], f"SecAgg+ dropout: {reason}")
            for node, reason in result.dropped.items()
        ]
        accepted.sort(key=lambda r: (r.label, r.node_id))
        rejected.sort(key=lambda r: (r.label, r.node_id))
        return Screened(accepted=accepted, rejected=rejected)
