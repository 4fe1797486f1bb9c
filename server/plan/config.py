"""The federation config file (``federation.toml``), as pydantic models.

This is the I/O edge: text from a user becomes validated values here, and nowhere else.
Every section refuses unknown keys, so a typo (``round = 5``) is an error, not a silent
default. `federator.server.plan` turns a validated config into the frozen plan the rest of
Federator runs on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from federator.client.bundle import PipRequirement
from federator.client.tasks import Optimizer
from federator.privacy.accounting import Accountant
from federator.privacy.central import CentralClipping, ClippingSide
from federator.privacy.policy import ClipNorm, Delta, Epsilon
from federator.server.plan.retrain import RetrainPolicy
from federator.simulations.attacks.settings import AttackSection
from federator.simulations.partition import (
    Alpha,
    Clients,
    MinPartitionSize,
    Partitioner,
    ServerHoldout,
    ShardsPerClient,
    ValFraction,
)
from federator.strategies.update_rules import UpdateRules

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
Fraction01 = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class FederationSection(_Section):
    """Who and how long: the federation's name, number of rounds and master seed."""

    name: Annotated[str, Field(pattern=_NAME)]
    rounds: Annotated[int, Field(ge=1, le=100_000)]
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    # Start from a registered version's weights instead of a fresh model: an alias
    # ("champion") or a version number; its first version's lineage parent is that version.
    warm_start: Annotated[str, Field(pattern=r"^(champion|challenger|[1-9][0-9]*)$")] | None = None
    # Why this federation runs, tagged on its MLflow run (``federator watch`` writes its trigger).
    started_by: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class TaskSection(_Section):
    """The learning task: a built-in name (``mnist-cnn``, ``digits-mlp``) or ``module:object``.

    In a deployment (``federator run``) a task of your own travels to the nodes as a signed
    bundle (`federator.client.bundle`): ``source`` is the module file or package folder to
    pack (relative to the config; default: the task's top-level module next to the config),
    ``requires`` the packages it imports that every node must already have installed.
    """

    name: Annotated[str, Field(min_length=1)]
    source: str | None = None
    requires: tuple[PipRequirement, ...] = ()


class DataSection(_Section):
    """Simulation data: which dataset, how many clients and how it is split among them."""

    dataset: str | None = None
    clients: Clients
    partitioner: Partitioner = Partitioner.IID
    alpha: Alpha = 0.5
    min_partition_size: MinPartitionSize = 10
    shards_per_client: ShardsPerClient = 2
    server_holdout: ServerHoldout = 0.2
    client_val_fraction: ValFraction = 0.2


class StrategySection(_Section):
    """Aggregation strategy (a registry name), who takes part, and its own parameters."""

    name: str = "fedavg"
    fraction_train: Annotated[float, Field(gt=0, le=1)] = 1.0
    fraction_evaluate: Fraction01 = 1.0
    min_train_nodes: Annotated[int, Field(ge=1)] | None = None
    min_evaluate_nodes: Annotated[int, Field(ge=0)] | None = None
    min_available_nodes: Annotated[int, Field(ge=1)] | None = None
    min_replies: Annotated[int, Field(ge=1)] = 1
    round_timeout: Annotated[float, Field(gt=0)] = 600.0
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSection(_Section):
    """How each client trains locally in a round."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 32
    optimizer: Optimizer = Optimizer.SGD
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class TrackingSection(_Section):
    """Where results go. Without ``uri``: an SQLite store under ``runs_dir``."""

    uri: str | None = None
    runs_dir: str = "federator-runs"
    experiment: Annotated[str, Field(min_length=1)] | None = None
    registered_model: Annotated[str, Field(pattern=_NAME)] | None = None
    # How many finished rounds may wait for their checkpoint before the round loop waits for
    # MLflow (back-pressure). 1: a round is committed before the next one is reported.
    max_unsaved_rounds: Annotated[int, Field(ge=0, le=100)] = 1
    # False: model versions get their weights and lineage but no pytorch flavour (not loadable
    # with mlflow.pytorch.load_model) — for sweeps and benchmarks, where nobody loads them
    # and the export (seconds of CPU per version) would dominate a short run.
    export_flavour: bool = True


class GateMetric(StrEnum):
    """The server-side validation metric the gate judges."""

    ACCURACY = "accuracy"
    LOSS = "loss"


class GateSection(_Section):
    """When a new global model may become ``champion``.

    ``threshold``: the least accuracy (or the most loss) a champion may have.
    ``max_regression``: how much worse than the current champion a new one may be.
    ``max_client_spread``: the most (max − min) per-client accuracy may differ; omit to skip.
    """

    metric: GateMetric = GateMetric.ACCURACY
    threshold: float = 0.0
    max_regression: Annotated[float, Field(ge=0)] = 0.0
    max_client_spread: Annotated[float, Field(ge=0, le=1)] | None = None


class ReleaseSection(_Section):
    """Signed releases to the nodes. Without ``signing_key`` nothing is released.

    ``public_key``: what simulated nodes pin (default: ``release.pub`` next to the signing key).
    ``passphrase_env``: the environment variable holding the signing key's passphrase.
    ``keep``: how many versions each simulated node keeps.
    ``valid_days``: how long a release may be installed; after that nodes refuse it and
    ``federator node models`` shows the installed one as expired (a cut release channel then
    shows, instead of a stale model served forever).
    """

    signing_key: str | None = None
    passphrase_env: str | None = None
    public_key: str | None = None
    keep: Annotated[int, Field(ge=1, le=100)] = 3
    valid_days: Annotated[float, Field(gt=0, le=3650)] = 30.0


class LocalDpSection(_Section):
    """Local DP-SGD on every client (Opacus). σ is set so that all planned rounds together
    stay within ``target_epsilon`` at ``delta``; each node's own budget still applies."""

    target_epsilon: Epsilon
    delta: Delta
    max_grad_norm: ClipNorm = 1.0
    accountant: Accountant = Accountant.RDP


class CentralDpSection(_Section):
    """Central DP: clip each update, add Gaussian noise to the aggregate (Flower's wrappers).

    With ``max_epsilon`` (and ``delta``) the federation is accounted with Flower's
    `RdpAccountant` and stops before the next round would exceed it — fixed clipping only.
    """

    clipping: CentralClipping = CentralClipping.FIXED
    side: ClippingSide = ClippingSide.SERVER
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    clipping_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    target_clipped_quantile: Annotated[float, Field(ge=0, le=1)] = 0.5
    clip_norm_lr: Annotated[float, Field(gt=0)] = 0.2
    clipped_count_stddev: Annotated[float, Field(ge=0)] | None = None
    delta: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class SecAggSection(_Section):
    """Secure aggregation (SecAgg+, Bell et al. 2020): the server only sees the sum.

    ``num_shares``: how many peers each client's secret is shared with (≥ 3);
    ``reconstruction_threshold``: how many shares rebuild it — the round survives dropouts as
    long as this many clients stay; ``clipping_range`` and ``quantization_range`` set the
    fixed-point encoding of updates (each update value must lie within ±clipping_range);
    ``max_weight``: the most examples one client's update counts for (larger clients are
    capped); ``timeout``: seconds per protocol stage, local training included (default: the
    strategy's ``round_timeout``).
    """

    num_shares: Annotated[int, Field(ge=3)]
    reconstruction_threshold: Annotated[int, Field(ge=2)]
    clipping_range: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 8.0
    quantization_range: Annotated[int, Field(ge=2, lt=2**32)] = 4_194_304
    max_weight: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1000.0
    timeout: Annotated[float, Field(gt=0)] | None = None


class PrivacySection(_Section):
    """Privacy protections; each sub-table is optional (``[privacy.local]`` etc.)."""

    local: LocalDpSection | None = None
    central: CentralDpSection | None = None
    secagg: SecAggSection | None = None


class Profile(StrEnum):
    """A deployment profile (see `federator.server.plan._profiles`)."""

    CROSS_SILO = "cross-silo"
    EDGE = "edge"


class DeploymentSection(_Section):
    """How the federation is deployed: ``profile`` fills in sampling and timeout defaults."""

    profile: Profile | None = None


class FederationConfig(_Section):
    """A whole ``federation.toml``."""

    federation: FederationSection
    task: TaskSection
    data: DataSection
    strategy: StrategySection = Field(default_factory=StrategySection)
    # Training updates screened by size and direction (`federator.strategies.update_rules`).
    screening: UpdateRules = Field(default_factory=UpdateRules)
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    training: TrainingSection = Field(default_factory=TrainingSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    gate: GateSection = Field(default_factory=GateSection)
    release: ReleaseSection = Field(default_factory=ReleaseSection)
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)
    # Byzantine simulated clients, for research (`federator.simulations.attacks`); a
    # deployment refuses a config that has it.
    attack: AttackSection | None = None
