"""Central differential privacy: Flower's DP strategy wrappers, built from a federation's plan.

The coordinator clips every client's model update to a norm C, averages the clipped updates
with *equal* weights and adds Gaussian noise of standard deviation σ·C/n to the average —
DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").
With adaptive clipping C follows a target quantile of the update norms, learned privately
(Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping"). Clipping runs
on the server, or on each client (Flower's client mods) so that the server never holds an
unclipped update. The guarantee is client-level: it protects whether one *client* took part.

Flower's wrappers do the clipping and noise; this module composes them:

* `UniformWeights` sits outside the DP wrapper and gives every accepted update the same
  weight. The noise is calibrated to a sensitivity of C/n, which only holds for an unweighted
  mean — a client reporting many examples would otherwise count for more.
* With ``delta`` set, Flower's `RdpAccountant` (``flwr[dp]``, no amplification by sampling)
  counts every released aggregate; the wrapper raises Flower's ``PrivacyBudgetExhausted``
  *before* a round whose release would exceed ``max_epsilon``, and the round loop stops there.
* `client_clipping_mod` applies Flower's fixed or adaptive clipping mod on the client when the
  instructions ask for client-side clipping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from federator import ConfigError
from federator.client.wire import NUM_EXAMPLES
from federator.strategies.forwarding import ForwardingStrategy

UNIFORM_WEIGHT = "federator-uniform-weight"


class CentralClipping(StrEnum):
    """How updates are clipped for central DP."""

    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class ClippingSide(StrEnum):
    """Where updates are clipped: by the server, or by each client before sending."""

    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True, kw_only=True)
class CentralDpSettings:
    """Validated central-DP settings (``delta`` set: accounted, stop at ``max_epsilon``)."""

    clipping: CentralClipping
    side: ClippingSide
    noise_multiplier: float
    clipping_norm: float
    target_clipped_quantile: float
    clip_norm_lr: float
    clipped_count_stddev: float | None
    delta: float | None
    max_epsilon: float | None
    clients: int
    sampled_per_round: int

    @property
    def accounted(self) -> bool:
        return self.delta is not None


def _set_weight(replies: Iterable[Message], value: str | None) -> list[Message]:
    """Write the uniform weight into each reply's MetricRecord: 1, or (``value``) a copy of
    another metric."""
    out = list(replies)
    for reply in out:
        if reply.has_error():
            continue
        for record in reply.content.metric_records.values():
            record[UNIFORM_WEIGHT] = 1 if value is None else record.get(value, 0)
    return out


class UniformWeights(ForwardingStrategy):
    """Average training updates with equal weights over exactly the sampled clients.

    The noise is calibrated to a sensitivity of C/n for n = ``sampled`` clients: an average
    over fewer updates (a client dropped out or was rejected) would have a larger sensitivity
    than the noise covers, so such a round is not aggregated — `AggregationError`, and the
    round loop skips the round with that reason. The wrapped FedAvg-family strategy is told to
    weight by `UNIFORM_WEIGHT`; training replies get weight 1, evaluation replies keep their
    example counts, so evaluation metrics stay example-weighted.
    """

    def __init__(self, inner: Strategy, *, base: FedAvg, sampled: int) -> None:
        base.weighted_by_key = UNIFORM_WEIGHT
        super().__init__(inner)
        self.sampled = sampled

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good = sum(not r.has_error() for r in replies)
        if good != self.sampled:
            raise AggregationError(
                f"central DP: {good} of the {self.sampled} sampled clients sent an acceptable "
                f"update, and the noise is calibrated for an average over {self.sampled}"
            )
        return self.inner.aggregate_train(server_round, _set_weight(replies, None))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, _set_weight(replies, NUM_EXAMPLES))


@dataclass(frozen=True)
class CentralDp:
    """A strategy with central DP around it, and its accountant (None: not accounted)."""

    strategy: Strategy
    accountant: RdpAccountant | None

    def spent(self) -> dict[str, float]:
        """ε and δ spent so far (empty when not accounted)."""
        if self.accountant is None:
            return {}
        s = self.accountant.get_privacy_spent()
        return {"central-epsilon": float(s.epsilon), "central-delta": float(s.delta)}

    def state_dict(self) -> dict[str, Any]:
        """The accountant's state (Flower's `RdpAccountant.state_dict`; empty when not
        accounted): a resumed federation goes on spending from where it stopped."""
        return {} if self.accountant is None else dict(self.accountant.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.accountant is not None and state:
            self.accountant.load_state_dict(dict(state))


def _accountant(s: CentralDpSettings) -> RdpAccountant | None:
    if s.delta is None:
        return None
    return RdpAccountant(
        PrivacyConfig(
            target_delta=s.delta,
            population_size=s.clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=s.max_epsilon,
        )
    )


def central_dp(base: Strategy, settings: CentralDpSettings) -> CentralDp:
    """Wrap ``base`` (a FedAvg-family strategy) in Flower's central-DP wrapper."""
    if not isinstance(base, FedAvg):
        raise ConfigError(
            f"central DP needs a strategy that averages updates (FedAvg family), "
            f"not {type(base).__name__}"
        )
    s, accountant = settings, _accountant(settings)
    n = s.sampled_per_round
    wrapper: Strategy
    if s.clipping is CentralClipping.FIXED:
        fixed = (
            DifferentialPrivacyServerSideFixedClipping
            if s.side is ClippingSide.SERVER
            else DifferentialPrivacyClientSideFixedClipping
        )
        wrapper = fixed(base, s.noise_multiplier, s.clipping_norm, n, accountant=accountant)
    else:
        adaptive = (
            DifferentialPrivacyServerSideAdaptiveClipping
            if s.side is ClippingSide.SERVER
            else DifferentialPrivacyClientSideAdaptiveClipping
        )
        wrapper = adaptive(
            base,
            s.noise_multiplier,
            n,
            initial_clipping_norm=s.clipping_norm,
            target_clipped_quantile=s.target_clipped_quantile,
            clip_norm_lr=s.clip_norm_lr,
            clipped_count_stddev=s.clipped_count_stddev,
        )
    return CentralDp(strategy=UniformWeights(wrapper, base=base, sampled=n), accountant=accountant)


CLIPPING_MODS = {
    CentralClipping.FIXED: fixedclipping_mod,
    CentralClipping.ADAPTIVE: adaptiveclipping_mod,
}


def client_clipping(
    clipping: CentralClipping | None,
    msg: Message,
    context: Context,
    call_next: Any,
) -> Message:
    """Run ``call_next`` under Flower's client-side clipping mod for ``clipping`` (None:
    plainly). The mod clips the reply's update to the norm the server's wrapper sent."""
    if clipping is None:
        reply: Message = call_next(msg, context)
        return reply
    clipped: Message = CLIPPING_MODS[clipping](msg, context, call_next)
    return clipped


__all__ = [
    "CLIPPING_MODS",
    "UNIFORM_WEIGHT",
    "CentralClipping",
    "CentralDp",
    "CentralDpSettings",
    "ClippingSide",
    "UniformWeights",
    "central_dp",
    "client_clipping",
]
