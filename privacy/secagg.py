"""SecAgg+ secure aggregation: the coordinator learns the weighted mean of the updates, not one.

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020) masks every client's quantised update with pairwise
masks shared with its ``num_shares - 1`` neighbours plus a private mask; the masks cancel in the
sum, and Shamir shares of the mask seeds (any ``reconstruction_threshold`` of them rebuild a
seed) let the server remove the masks of clients that dropped out. Flower 1.42 implements it
only in its legacy API (`flwr.server.workflow.SecAggPlusWorkflow` + `secaggplus_mod`); this
module and its private parts (`_secagg_server`, `_secagg_client`) are the only places
Federator touches that API.

`run_secagg_round` runs the four protocol stages (setup, share keys, collect masked vectors,
unmask) once, over nodes the caller sampled, from Federator's own Message-API round loop.
What the server learns: the dequantised weighted mean of the survivors' vectors, each
survivor's weight (number of examples, capped at ``max_weight``) and its plaintext metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    FitIns,
    FitRes,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server import LegacyContext
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from federator.client.wire import (
    SECAGG_ACTION,
    SECAGG_CLIPPING_KEY,
    SECAGG_KEYS_KEY,
    SECAGG_MAX_WEIGHT_KEY,
)
from federator.privacy._secagg_server import OneRound, SendReceive, StageGrid
from federator.privacy.secagg_client import (
    SECAGG_MESSAGE_TYPE,
    fitres_reply,
    read_fitins,
    secagg_mods,
)

MODULUS_RANGE = 2**32  # Flower's default; masks are drawn from [0, 2**32)


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Protocol parameters. ``timeout`` bounds every stage, including local training (which
    runs inside "collect masked vectors"). A client's weight is ``min(num_examples,
    max_weight)``; its update must lie within ±``clipping_range`` (the fixed-point encoding)."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    max_weight: float
    timeout: float

    def tolerance(self, *, survivors: int, total_weight: float) -> float:
        """Largest error stochastic quantisation can put in one entry of the mean: each of
        ``survivors`` vectors is rounded by less than one step (2·clipping/quantization) after
        scaling by weight/max_weight, and the sum is divided by Σ weight/max_weight."""
        step = 2 * self.clipping_range / self.quantization_range
        return survivors * step * self.max_weight / total_weight


@dataclass(frozen=True, kw_only=True)
class Survivor:
    """A client whose masked vector is in the sum: its weight and plaintext metrics."""

    node_id: int
    weight: int
    metrics: Mapping[str, Scalar]
    reply: Message = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class SecAggResult:
    """One SecAgg+ round. ``mean`` is the weighted mean of the survivors' vectors (float64,
    in the order sent), or ``None`` when the round aborted (``abort_reason`` says why).
    ``dropped``: sampled nodes whose vector is not in the sum, with what happened."""

    mean: tuple[np.ndarray, ...] | None
    survivors: tuple[Survivor, ...]
    dropped: Mapping[int, str]
    abort_reason: str | None = None

    @property
    def aborted(self) -> bool:
        return self.mean is None


SecAggWorkflow = type[SecAggPlusWorkflow]  # Flower's workflow class, or a subclass of it


def _abort_reason(stage: str, answered: int, sampled: int, params: SecAggParams) -> str:
    return (
        f"secure aggregation aborted in stage {stage or 'setup'}: {answered} of {sampled} "
        f"sampled clients still took part; every client needs "
        f"{params.reconstruction_threshold} live clients among its {params.num_shares} "
        "neighbours (reconstruction threshold)"
    )


def run_secagg_round(
    *,
    grid: Grid,
    exchange: SendReceive,
    server_round: int,
    node_ids: Sequence[int],
    arrays: Sequence[np.ndarray],
    keys: Sequence[str],
    config: Mapping[str, Scalar],
    params: SecAggParams,
    workflow: SecAggWorkflow = SecAggPlusWorkflow,
) -> SecAggResult:
    """One SecAgg+ round over ``node_ids``: each trains from ``arrays`` (named ``keys``) with
    ``config`` and contributes its update ``local − arrays``; returns their weighted mean.

    Never raises because clients dropped: too few survivors give an aborted result. A
    protocol error (a malformed masked vector, a share that does not combine) also aborts,
    with the error as the reason. ``workflow``: Flower's `SecAggPlusWorkflow` (stock) or a
    subclass of it — the coordinator passes its dropout-tolerant one
    (`federator.server._flwr_compat`).
    """
    full_config = dict(config) | {
        SECAGG_KEYS_KEY: "\n".join(keys),
        SECAGG_CLIPPING_KEY: params.clipping_range,
        SECAGG_MAX_WEIGHT_KEY: params.max_weight,
    }
    proxies = [GridClientProxy(node_id=n, grid=grid, run_id=grid.run.run_id) for n in node_ids]
    fitins = FitIns(ndarrays_to_parameters(list(arrays)), full_config)
    strategy = OneRound(proxies, fitins)
    protocol = workflow(
        num_shares=params.num_shares,
        reconstruction_threshold=params.reconstruction_threshold,
        max_weight=params.max_weight,
        clipping_range=params.clipping_range,
        quantization_range=params.quantization_range,
        modulus_range=MODULUS_RANGE,
        timeout=params.timeout,
    )
    stage_grid = StageGrid(grid, exchange, params.timeout)
    error: str | None = None
    try:
        protocol(stage_grid, _legacy_context(grid, strategy, fitins, server_round=server_round))
    except (ValueError, KeyError, TypeError, IndexError) as err:  # a client broke the protocol
        error = f"secure aggregation failed in stage {stage_grid.stage}: {err!r}"
    results = strategy.results if error is None else None
    if not results:
        answered = len(node_ids) - len(stage_grid.dropped)
        return SecAggResult(
            mean=None,
            survivors=(),
            dropped=stage_grid.dropped,
            abort_reason=error or _abort_reason(stage_grid.stage, answered, len(node_ids), params),
        )
    return _aggregated(results, stage_grid)


def _legacy_context(
    grid: Grid, strategy: OneRound, fitins: FitIns, *, server_round: int
) -> LegacyContext:
    """The legacy context Flower's workflow reads: the round number and the global model."""
    context = LegacyContext(
        Context(
            run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
        ),
        strategy=strategy,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: server_round}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(
        fitins.parameters, keep_input=True
    )
    return context


def _aggregated(results: list[tuple[ClientProxy, FitRes]], stage_grid: StageGrid) -> SecAggResult:
    """The unmasked mean and who contributed to it (a node that dropped after sending its
    masked vector still counts: its vector is in the sum)."""
    mean = tuple(parameters_to_ndarrays(results[0][1].parameters))
    survivors = tuple(
        sorted(
            (
                Survivor(
                    node_id=proxy.node_id,
                    weight=res.num_examples,
                    metrics=dict(res.metrics),
                    reply=stage_grid.masked[proxy.node_id],
                )
                for proxy, res in results
            ),
            key=lambda s: s.node_id,
        )
    )
    dropped = {n: r for n, r in stage_grid.dropped.items() if n not in stage_grid.masked}
    return SecAggResult(mean=mean, survivors=survivors, dropped=dropped)


__all__ = [
    "MODULUS_RANGE",
    "SECAGG_ACTION",
    "SECAGG_MESSAGE_TYPE",
    "SecAggParams",
    "SecAggResult",
    "SecAggWorkflow",
    "SendReceive",
    "Survivor",
    "fitres_reply",
    "read_fitins",
    "run_secagg_round",
    "secagg_mods",
]
