"""From a ``federation.toml`` (plus overrides) to a frozen, cross-checked `FederationPlan`.

Validation happens in two layers: the pydantic schema (`federator.server.plan.config`) checks each
key on its own; `build_plan` then checks what only the whole config can tell — a minimum
number of nodes larger than the federation, a gate that needs client evaluations nobody runs,
Krum's bound on malicious nodes, settings given for a partitioner that is not used. All
problems are reported together, each with its key path and the file it came from.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy
from pydantic import BaseModel, ValidationError

from federator import ConfigError, FederatorError
from federator.client.bundle import TaskBundle
from federator.client.tasks import Task, TrainSettings, resolve_task
from federator.server.plan._checks import cross_checks, sampled
from federator.server.plan._profiles import apply_profile
from federator.server.plan.attack import attack_plan, attack_problems, resolved_attack
from federator.server.plan.config import FederationConfig, GateSection
from federator.server.plan.overrides import Override, apply_overrides
from federator.server.plan.privacy import PrivacyPlan, privacy_plan, privacy_problems
from federator.server.plan.release import ReleasePlan, release_plan
from federator.server.plan.retrain import RetrainPolicy
from federator.simulations.attacks.settings import Attack
from federator.simulations.partition import SimulationData
from federator.strategies import STRATEGIES, Sampling, StrategySpec
from federator.strategies.update_rules import UpdateRules

_TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql")


@dataclass(frozen=True, kw_only=True)
class StrategyPlan:
    """The strategy to build and how rounds sample nodes."""

    name: str
    spec: StrategySpec
    params: BaseModel
    sampling: Sampling
    min_replies: int
    round_timeout: float

    def build(self) -> Strategy:
        """A fresh Flower strategy (unwrapped)."""
        return self.spec.build(self.sampling, self.params)

    def aggregating(self, strategy: Strategy) -> Strategy:
        """``strategy`` (from `build`) with Federator's own aggregator, if the spec has one."""
        return self.spec.aggregating(strategy, self.params)

    @property
    def train_nodes_per_round(self) -> int:
        return sampled(
            self.sampling.min_available_nodes,
            self.sampling.fraction_train,
            self.sampling.min_train_nodes,
        )

    @property
    def evaluate_nodes_per_round(self) -> int:
        if self.sampling.fraction_evaluate == 0:
            return 0
        return sampled(
            self.sampling.min_available_nodes,
            self.sampling.fraction_evaluate,
            self.sampling.min_evaluate_nodes,
        )


@dataclass(frozen=True, kw_only=True)
class TrackingPlan:
    """Where runs, metrics and model versions are recorded."""

    uri: str
    artifact_location: str | None
    experiment: str
    registered_model: str
    runs_dir: Path
    max_unsaved_rounds: int = 1
    export_flavour: bool = True


@dataclass(frozen=True, kw_only=True)
class FederationPlan:
    """Everything a federation run needs, validated and frozen."""

    name: str
    rounds: int
    seed: int
    task_ref: str
    data: SimulationData
    strategy: StrategyPlan
    screening: UpdateRules
    training: TrainSettings
    tracking: TrackingPlan
    gate: GateSection
    release: ReleasePlan | None
    privacy: PrivacyPlan
    source: str
    resolved: Mapping[str, Any] = field(repr=False)
    config_hash: str
    # A deployment of a task of its own: the signed bundle every node and release carries.
    task_bundle: TaskBundle | None = None
    # The registered version (alias or number) whose weights round 1 starts from.
    warm_start: str | None = None
    started_by: str | None = None  # why it runs (a retrain trigger), tagged on the run
    retrain: RetrainPolicy = field(default_factory=RetrainPolicy)
    # Byzantine simulated clients (``[attack]``): simulation only, see `for_deployment`.
    attack: Attack | None = None

    def task(self) -> Task:
        """The task object (built-in or imported)."""
        return resolve_task(self.task_ref)

    def flat_params(self) -> dict[str, str]:
        """The resolved config flattened to ``section.key`` → text (for MLflow params)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if not isinstance(value, str) else value

        walk("", self.resolved)
        return out


# --------------------------------------------------------------------------------------------
# Reading files


def bundled_examples() -> list[str]:
    """Names of the example configs shipped in ``federator.simulations``."""
    root = resources.files("federator.simulations")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def resolve_config_path(ref: str | Path) -> Path:
    """A config path, or the bundled example of that name (``demo``, ``mnist-cnn``, ...)."""
    path = Path(ref)
    if path.is_file():
        return path
    bundled = resources.files("federator.simulations") / f"{ref}.toml"
    if isinstance(bundled, Path) and bundled.is_file():
        return bundled
    if path.exists():
        raise ConfigError(f"{path}: is not a file")
    examples = ", ".join(bundled_examples())
    raise ConfigError(f"{path}: no such file (bundled examples: {examples})")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


# --------------------------------------------------------------------------------------------
# Validation


def _format_loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _allowed_keys(loc: Sequence[int | str]) -> list[str]:
    model: type[BaseModel] | None = FederationConfig
    for part in loc[:-1]:
        info = model.model_fields.get(str(part)) if model else None
        ann = info.annotation if info else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(model.model_fields) if model else []


def _pydantic_problems(err: ValidationError, prefix: Sequence[str] = ()) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = [*prefix, *e["loc"]]
        where = _format_loc(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc) if not prefix else []
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            problems.append(f"{where}: unknown key{hint}")
        elif e["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        else:
            problems.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return problems


def _origin_notes(problems: list[str], overrides: Sequence[Override]) -> list[str]:
    out = []
    for problem in problems:
        notes = [o.origin for o in overrides if problem.startswith(".".join(o.path))]
        out.append(problem + (f"  [from {notes[-1]}]" if notes else ""))
    return out


def _tracking(cfg: FederationConfig) -> TrackingPlan:
    tr, name = cfg.tracking, cfg.federation.name
    runs_dir = Path(tr.runs_dir).expanduser().resolve()
    uri = tr.uri or f"sqlite:///{runs_dir / 'mlflow.db'}"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in _TRACKING_SCHEMES:
        raise ConfigError(
            f"tracking.uri: {uri!r} is not a tracking URI; use sqlite:///path.db, "
            "http(s)://host:port or a database URI"
        )
    local = scheme in ("sqlite", "file")
    return TrackingPlan(
        uri=uri,
        artifact_location=str(runs_dir / "artifacts") if local else None,
        experiment=tr.experiment or name,
        registered_model=tr.registered_model or name,
        runs_dir=runs_dir,
        max_unsaved_rounds=tr.max_unsaved_rounds,
        export_flavour=tr.export_flavour,
    )


def config_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 of everything that shapes results (all but ``tracking`` and ``release``)."""
    shaping = {k: v for k, v in resolved.items() if k not in ("tracking", "release")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def build_plan(
    raw: Mapping[str, Any], *, source: str, overrides: Sequence[Override] = ()
) -> FederationPlan:
    """Validate ``raw`` (with ``overrides`` applied) and freeze it into a plan.

    Raises `ConfigError` listing every problem found, each prefixed with ``source``.
    """
    merged = apply_profile(apply_overrides(dict(raw), overrides))
    try:
        cfg = FederationConfig.model_validate(merged)
    except ValidationError as err:
        raise _config_error(source, _origin_notes(_pydantic_problems(err), overrides)) from None
    parts, problems = _resolve(cfg)
    if problems or parts is None:
        raise _config_error(source, _origin_notes(problems, overrides))
    return _freeze(cfg, parts, source=source)


@dataclass(frozen=True)
class _Parts:
    """What the config names, looked up: strategy, its parameters, task, tracking, release."""

    spec: StrategySpec
    params: BaseModel
    task: Task
    tracking: TrackingPlan
    release: ReleasePlan | None


def _resolve(cfg: FederationConfig) -> tuple[_Parts | None, list[str]]:
    """Look up what ``cfg`` names and check it against the rest: every problem at once."""
    problems: list[str] = []
    spec = params = task = tracking = None
    release: ReleasePlan | None = None
    try:
        spec = STRATEGIES.get(cfg.strategy.name)
    except FederatorError as err:
        problems.append(f"strategy.name: {err}")
    if spec is not None:
        try:
            params = spec.parse_params(cfg.strategy.params)
        except ValidationError as err:
            problems += _pydantic_problems(err, prefix=("strategy", "params"))
    try:
        task = resolve_task(cfg.task.name)
    except FederatorError as err:
        problems.append(f"task.name: {err}")
    problems += cross_checks(cfg, spec, params, task)
    problems += privacy_problems(cfg, spec, task, train_nodes=_train_nodes(cfg))
    problems += attack_problems(cfg, train_nodes=_train_nodes(cfg))
    try:
        tracking = _tracking(cfg)
    except ConfigError as err:
        problems.append(str(err))
    try:
        release = release_plan(cfg.release)
    except ConfigError as err:
        problems.append(str(err))
    if spec is None or params is None or task is None or tracking is None:
        return None, problems
    return _Parts(spec, params, task, tracking, release), problems


def _sampling(cfg: FederationConfig) -> Sampling:
    """Who takes part in a round, with the defaults filled in (at most 2 nodes, or all)."""
    n, s = cfg.data.clients, cfg.strategy
    return Sampling(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes or min(2, n),
        min_evaluate_nodes=s.min_evaluate_nodes if s.min_evaluate_nodes is not None else min(2, n),
        min_available_nodes=s.min_available_nodes or n,
    )


def _freeze(cfg: FederationConfig, parts: _Parts, *, source: str) -> FederationPlan:
    """The frozen plan of a config that passed every check."""
    spec, params, task = parts.spec, parts.params, parts.task
    resolved = cfg.model_dump(mode="json")
    resolved["data"]["dataset"] = cfg.data.dataset or task.dataset
    resolved["strategy"]["params"] = params.model_dump(mode="json")
    attack = attack_plan(cfg, train_nodes=_train_nodes(cfg))
    if attack is None:
        del resolved["attack"]  # a config without one hashes as it did before attacks existed
    else:
        resolved["attack"] = resolved_attack(cfg, attack)
    return FederationPlan(
        name=cfg.federation.name,
        rounds=cfg.federation.rounds,
        seed=cfg.federation.seed,
        warm_start=cfg.federation.warm_start,
        started_by=cfg.federation.started_by,
        retrain=cfg.retrain,
        task_ref=cfg.task.name,
        data=SimulationData(
            **cfg.data.model_dump(exclude={"dataset"}),
            dataset=cfg.data.dataset or task.dataset,
            seed=cfg.federation.seed,
        ),
        strategy=StrategyPlan(
            name=spec.name,
            spec=spec,
            params=params,
            sampling=_sampling(cfg),
            min_replies=cfg.strategy.min_replies,
            round_timeout=cfg.strategy.round_timeout,
        ),
        screening=cfg.screening,
        training=TrainSettings(
            **cfg.training.model_dump(),
            proximal_mu=float(getattr(params, "proximal_mu", 0.0)),
            seed=cfg.federation.seed,
        ),
        tracking=parts.tracking,
        gate=cfg.gate,
        release=parts.release,
        privacy=privacy_plan(cfg, train_nodes=_train_nodes(cfg)),
        source=source,
        resolved=resolved,
        config_hash=config_hash(resolved),
        attack=attack,
    )


def _train_nodes(cfg: FederationConfig) -> int:
    n, s = cfg.data.clients, cfg.strategy
    return sampled(s.min_available_nodes or n, s.fraction_train, s.min_train_nodes or min(2, n))


def _config_error(source: str, problems: list[str]) -> ConfigError:
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"{source}: invalid federation config:\n{lines}")


def for_deployment(plan: FederationPlan) -> FederationPlan:
    """``plan``, if it may run on real nodes; `ConfigError` naming what only a simulation may
    do. Every deployment path asks (`federator run`, `federator bundle`, the ServerApp that
    ``flwr run`` starts): attacks run under ``federator simulate`` alone."""
    if plan.attack is not None:
        raise ConfigError(
            f"{plan.source}: attack: the [attack] section turns simulated clients Byzantine "
            "for research and is refused outside `federator simulate` (a deployment's nodes "
            "are real partners); remove it to deploy this config"
        )
    return plan


def load_plan(ref: str | Path, *, overrides: Sequence[Override] = ()) -> FederationPlan:
    """Read, override, validate and freeze a config file (or a bundled example's name)."""
    path = resolve_config_path(ref)
    return build_plan(read_config_file(path), source=str(path), overrides=overrides)
