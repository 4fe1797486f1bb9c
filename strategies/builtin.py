"""Flower 1.42's Message-API strategies, registered under short names with typed parameters.

Each entry cites the paper the Flower implementation follows. Federator never subclasses these;
its hooks wrap whichever one the config names (see `federator.strategies.screening`). The
averaging and robust ones also name Federator's own aggregator
(`federator.strategies.aggregation`): same results as Flower's, much faster at scale, while the
Flower object still samples, configures and evaluates.
"""

from __future__ import annotations

from typing import Annotated, TypedDict

from flwr.serverapp import strategy as fl
from pydantic import BaseModel, ConfigDict, Field

from federator.strategies import aggregation as agg
from federator.strategies.registry import Registry
from federator.strategies.spec import NoParams, Sampling, StrategySpec

STRATEGIES: Registry[StrategySpec] = Registry("strategy")

_Frozen = ConfigDict(extra="forbid", frozen=True)
Positive = Annotated[float, Field(gt=0)]
Decay = Annotated[float, Field(ge=0, lt=1)]


class _SamplingKw(TypedDict):
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


def _sampling_kwargs(s: Sampling) -> _SamplingKw:
    return {
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": s.min_train_nodes,
        "min_evaluate_nodes": s.min_evaluate_nodes,
        "min_available_nodes": s.min_available_nodes,
    }


class FedProxParams(BaseModel):
    """FedProx: weight of the proximal term the clients add to their loss."""

    model_config = _Frozen
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01


class FedOptParams(BaseModel):
    """Server-side adaptive optimisers (FedAdam, FedYogi): server learning rate and moments."""

    model_config = _Frozen
    eta: Positive = 0.01
    beta_1: Decay = 0.9
    beta_2: Decay = 0.99
    tau: Positive = 1e-3


class KrumParams(BaseModel):
    """Krum: how many Byzantine clients to tolerate."""

    model_config = _Frozen
    num_malicious_nodes: Annotated[int, Field(ge=0)] = 0


class MultiKrumParams(KrumParams):
    """Multi-Krum: Krum's bound, plus how many updates to average."""

    num_nodes_to_select: Annotated[int, Field(ge=1)] = 2


class TrimmedAvgParams(BaseModel):
    """Trimmed mean: the fraction cut from each end per coordinate."""

    model_config = _Frozen
    beta: Annotated[float, Field(ge=0, lt=0.5)] = 0.2


def _check_krum(params: BaseModel, train_nodes: int) -> list[str]:
    assert isinstance(params, KrumParams)
    problems = []
    f = params.num_malicious_nodes
    if not 2 * f + 2 < train_nodes:
        problems.append(
            f"Krum tolerates f={f} malicious nodes only with more than 2f+2={2 * f + 2} "
            f"updates per round, but a round samples {train_nodes}"
        )
    if isinstance(params, MultiKrumParams) and params.num_nodes_to_select > train_nodes:
        problems.append(
            f"num_nodes_to_select={params.num_nodes_to_select} exceeds the {train_nodes} "
            "updates a round samples"
        )
    return problems


def _check_bulyan(params: BaseModel, train_nodes: int) -> list[str]:
    assert isinstance(params, KrumParams)
    f = params.num_malicious_nodes
    if not 4 * f + 3 <= train_nodes:
        return [
            f"Bulyan tolerates f={f} malicious nodes only with at least 4f+3={4 * f + 3} "
            f"updates per round, but a round samples {train_nodes}"
        ]
    return []


def _mean(_: BaseModel) -> agg.Aggregator:
    return agg.WeightedMean()


def _multikrum_agg(p: BaseModel) -> agg.Aggregator:
    assert isinstance(p, KrumParams)
    m = p.num_nodes_to_select if isinstance(p, MultiKrumParams) else 1
    return agg.MultiKrum(num_malicious=p.num_malicious_nodes, num_to_select=m)


def _trimmed_agg(p: BaseModel) -> agg.Aggregator:
    assert isinstance(p, TrimmedAvgParams)
    return agg.TrimmedMean(p.beta)


def _median_agg(_: BaseModel) -> agg.Aggregator:
    return agg.Median()


def _bulyan_agg(p: BaseModel) -> agg.Aggregator:
    assert isinstance(p, KrumParams)
    return agg.Bulyan(num_malicious=p.num_malicious_nodes)


def _fedavg(s: Sampling, _: BaseModel) -> fl.Strategy:
    return fl.FedAvg(**_sampling_kwargs(s))


def _fedprox(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, FedProxParams)
    return fl.FedProx(**_sampling_kwargs(s), proximal_mu=p.proximal_mu)


def _fedadam(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, FedOptParams)
    return fl.FedAdam(**_sampling_kwargs(s), eta=p.eta, beta_1=p.beta_1, beta_2=p.beta_2, tau=p.tau)


def _fedyogi(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, FedOptParams)
    return fl.FedYogi(**_sampling_kwargs(s), eta=p.eta, beta_1=p.beta_1, beta_2=p.beta_2, tau=p.tau)


def _krum(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, KrumParams)
    return fl.Krum(**_sampling_kwargs(s), num_malicious_nodes=p.num_malicious_nodes)


def _multikrum(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, MultiKrumParams)
    return fl.MultiKrum(
        **_sampling_kwargs(s),
        num_malicious_nodes=p.num_malicious_nodes,
        num_nodes_to_select=p.num_nodes_to_select,
    )


def _trimmed(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, TrimmedAvgParams)
    return fl.FedTrimmedAvg(**_sampling_kwargs(s), beta=p.beta)


def _median(s: Sampling, _: BaseModel) -> fl.Strategy:
    return fl.FedMedian(**_sampling_kwargs(s))


def _bulyan(s: Sampling, p: BaseModel) -> fl.Strategy:
    assert isinstance(p, KrumParams)
    return fl.Bulyan(**_sampling_kwargs(s), num_malicious_nodes=p.num_malicious_nodes)


for _spec in (
    StrategySpec(
        name="fedavg",
        paper="McMahan et al. 2017, Communication-Efficient Learning of Deep Networks "
        "from Decentralized Data (arXiv:1602.05629)",
        params_model=NoParams,
        factory=_fedavg,
        plain_fedavg=True,
        aggregator=_mean,
    ),
    StrategySpec(
        name="fedprox",
        paper="Li et al. 2020, Federated Optimization in Heterogeneous Networks (arXiv:1812.06127)",
        params_model=FedProxParams,
        factory=_fedprox,
        per_example_loss=False,
        aggregator=_mean,
    ),
    StrategySpec(
        name="fedadam",
        paper="Reddi et al. 2021, Adaptive Federated Optimization (arXiv:2003.00295)",
        params_model=FedOptParams,
        factory=_fedadam,
        state_attrs=("m_t", "v_t"),
    ),
    StrategySpec(
        name="fedyogi",
        paper="Reddi et al. 2021, Adaptive Federated Optimization (arXiv:2003.00295)",
        params_model=FedOptParams,
        factory=_fedyogi,
        state_attrs=("m_t", "v_t"),
    ),
    StrategySpec(
        name="krum",
        paper="Blanchard et al. 2017, Machine Learning with Adversaries: Byzantine Tolerant "
        "Gradient Descent (NeurIPS 2017)",
        params_model=KrumParams,
        factory=_krum,
        needs_individual_updates=True,
        check=_check_krum,
        aggregator=_multikrum_agg,
    ),
    StrategySpec(
        name="multikrum",
        paper="Blanchard et al. 2017, Machine Learning with Adversaries: Byzantine Tolerant "
        "Gradient Descent (NeurIPS 2017)",
        params_model=MultiKrumParams,
        factory=_multikrum,
        needs_individual_updates=True,
        check=_check_krum,
        aggregator=_multikrum_agg,
    ),
    StrategySpec(
        name="fedtrimmedavg",
        paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal "
        "Statistical Rates (arXiv:1803.01498)",
        params_model=TrimmedAvgParams,
        factory=_trimmed,
        needs_individual_updates=True,
        aggregator=_trimmed_agg,
    ),
    StrategySpec(
        name="fedmedian",
        paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal "
        "Statistical Rates (arXiv:1803.01498)",
        params_model=NoParams,
        factory=_median,
        needs_individual_updates=True,
        aggregator=_median_agg,
    ),
    StrategySpec(
        name="bulyan",
        paper="El Mhamdi et al. 2018, The Hidden Vulnerability of Distributed Learning in "
        "Byzantium (ICML 2018, arXiv:1802.07927)",
        params_model=KrumParams,
        factory=_bulyan,
        needs_individual_updates=True,
        check=_check_bulyan,
        aggregator=_bulyan_agg,
    ),
):
    STRATEGIES.register(_spec.name, _spec)
