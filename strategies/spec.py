"""What a registered strategy is: a Flower strategy factory plus the schema of its parameters.

Strategy parameters arrive from a federation config (untrusted text). Each strategy names a
pydantic model for its own parameters, so ``[strategy.params]`` is checked key by key and an
unknown or out-of-range value is refused before anything starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import FedAvg, Strategy
from pydantic import BaseModel, ConfigDict

from federator.strategies.aggregation import Aggregator, FastAggregation
from federator.strategies.state import StrategyState


class NoParams(BaseModel):
    """For strategies that take no parameters beyond sampling."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Who takes part in a round; shared by every Flower strategy."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """A named strategy: how to build it, what parameters it takes, where it comes from.

    Capabilities, so that nothing dispatches on a strategy's name:
    ``needs_individual_updates`` marks robust aggregators that must see every client's update
    on its own (they do not average, so central DP's noise and secure aggregation do not fit);
    ``per_example_loss``: its client objective is a sum of per-example losses, which DP-SGD
    can bound (FedProx's proximal term is not); ``plain_fedavg``: it is Flower's unweighted-
    by-design FedAvg, the only strategy Flower's central-DP accountant and SecAgg+ (legacy API,
    Flower 1.42) work with. ``check`` returns problems that
    depend on the rest of the plan, e.g. Krum's bound on the number of malicious nodes.
    ``state_attrs`` names the strategy's attributes (dicts of arrays, such as FedAdam's
    moments) that a checkpoint must save for a resumed federation to continue exactly;
    `state_of` gives them as a state dict. ``aggregator`` (given the parameters) is
    Federator's own arithmetic for the strategy's training aggregate, equal to Flower's within
    1e-6 but without copying every reply; `aggregating` puts it around a built strategy.
    """

    name: str
    paper: str
    params_model: type[BaseModel]
    factory: Callable[[Sampling, BaseModel], Strategy]
    needs_individual_updates: bool = False
    per_example_loss: bool = True
    plain_fedavg: bool = False
    check: Callable[[BaseModel, int], list[str]] | None = None
    state_attrs: tuple[str, ...] = ()
    aggregator: Callable[[BaseModel], Aggregator] | None = None

    def parse_params(self, params: dict[str, object]) -> BaseModel:
        """Validate raw parameters; raises pydantic's ``ValidationError`` on bad input."""
        return self.params_model.model_validate(params)

    def problems(self, params: BaseModel, *, train_nodes: int) -> list[str]:
        """Plan-level contradictions for these parameters with ``train_nodes`` per round."""
        return [] if self.check is None else self.check(params, train_nodes)

    def build(self, sampling: Sampling, params: BaseModel) -> Strategy:
        """A fresh Flower strategy instance."""
        return self.factory(sampling, params)

    def aggregating(self, strategy: Strategy, params: BaseModel) -> Strategy:
        """``strategy`` (built by this spec) with Federator's aggregator doing its training
        aggregate, or ``strategy`` itself if this spec has none."""
        if self.aggregator is None:
            return strategy
        assert isinstance(strategy, FedAvg), "aggregators wrap FedAvg-family strategies"
        return FastAggregation(strategy, self.aggregator(params))

    def state_of(self, strategy: Strategy) -> StrategyState:
        """``strategy``'s own state (an instance this spec built), as a checkpoint part."""
        return StrategyState(strategy, self.state_attrs)
