"""Registering a round's global model as an MLflow model version (runs on the tracking worker).

A version is created with every lineage tag in one call, after its artifacts are uploaded:
``weights.safetensors`` and ``lineage.json`` — all a resume, a release or a node needs. The
pt2 pytorch flavour (``MLmodel`` and friends, for ``mlflow.pytorch.load_model``) is attached to
the same artifact folder later by the flavour exporter (see `_export`), so an expensive export
never holds a checkpoint back; the version's ``federator.flavour`` tag says whether it is
there yet. When the gate promoted it, the version takes the ``champion`` alias and, with
releases on, the `ReleaseService` signs it; the signed statement and envelope are stored next
to it under ``release/`` (the release service gets the release only once the round is
committed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federator import __version__
from federator.client.bundle import BUNDLE_FILES
from federator.client.weights import save_safetensors
from federator.client.wire import MetricName
from federator.server.federation.events import RoundOutcome
from federator.server.plan import FederationPlan
from federator.server.releases import PromotedVersion, ReleaseService, SignedRelease
from federator.server.tracking import mlflow_io as io
from federator.server.tracking._export import FLAVOUR_TAG, FlavourState
from federator.server.tracking._records import attack_version_tags

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Lineage:
    """The versions this federation registered so far (a checkpoint part,
    `Component.LINEAGE`; `load_state_dict` changes it in place: the registrar shares it)."""

    parent_version: str | None = None
    versions: dict[int, str] = field(default_factory=dict)
    champion: str | None = None
    champion_round: int | None = None
    # Largest local-DP ε each client reported for a round whose model was registered: every
    # later version descends from those updates, so it carries their privacy cost too.
    local_epsilons: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "parent_version": self.parent_version,
            "champion": self.champion,
            "champion_round": self.champion_round,
            "versions": {str(k): v for k, v in self.versions.items()},
            "local_epsilons": dict(self.local_epsilons),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.parent_version = state.get("parent_version")
        self.champion = state.get("champion")
        self.champion_round = state.get("champion_round")
        self.versions = {int(k): str(v) for k, v in (state.get("versions") or {}).items()}
        self.local_epsilons = {
            str(k): float(v) for k, v in (state.get("local_epsilons") or {}).items()
        }


@dataclass
class Registrar:
    """Creates model versions (and has ``releases`` sign the promoted ones) for one
    federation run."""

    plan: FederationPlan
    client: Any
    run_id: str
    artifact_uri: str
    code_version: str
    staging: Path
    releases: ReleaseService | None
    lineage: Lineage = field(default_factory=Lineage)

    def _model_dir(self, outcome: RoundOutcome, lineage: dict[str, Any]) -> Path:
        """The version's artifact folder in staging: weights and lineage (kept until the
        flavour exporter has used the weights)."""
        assert outcome.arrays is not None
        out = self.staging / f"round-{outcome.round:04d}"
        out.mkdir()
        save_safetensors(outcome.arrays, out / "weights.safetensors")
        (out / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True))
        return out

    def register(self, outcome: RoundOutcome) -> tuple[str, SignedRelease | None]:
        """Register ``outcome``'s model (weights and lineage, no flavour yet); returns its
        version and, if promoted and releases are on, the signed release."""
        plan, lin = self.plan, self.lineage
        decision, ev = outcome.decision, outcome.server_eval
        assert decision is not None
        assert ev is not None
        examples = {c.pseudonym: c.num_examples for c in outcome.train_clients}
        local_epsilons = self._local_epsilons(outcome)
        lineage = {
            "federation": plan.name,
            "federation_run_id": self.run_id,
            "round": outcome.round,
            "parent_version": lin.parent_version,
            "participants": examples,
            "config_hash": plan.config_hash,
            "code_version": self.code_version,
            "federator_version": __version__,
            "strategy": plan.strategy.name,
            "gate": {"decision": decision.verdict.value, "reasons": list(decision.reasons)},
            "val": {"accuracy": ev.accuracy, "loss": ev.loss},
        }
        out = self._model_dir(outcome, lineage)
        artifact_path = f"models/round-{outcome.round:04d}"
        self.client.log_artifacts(self.run_id, str(out), artifact_path=artifact_path)
        tags = {
            "federator.federation": plan.name,
            "federator.run_id": self.run_id,
            "federator.round": str(outcome.round),
            "federator.parent_version": lin.parent_version or "none",
            "federator.participants": io.list_tag(sorted(examples), what="participants"),
            "federator.participant_examples": io.list_tag(examples, what="participants"),
            "federator.num_participants": str(len(examples)),
            "federator.num_examples": str(sum(examples.values())),
            "federator.config_hash": plan.config_hash,
            "federator.code_version": self.code_version,
            "federator.strategy": plan.strategy.name,
            "federator.gate.decision": decision.verdict.value,
            "federator.gate.reasons": "; ".join(decision.reasons)[: io.TAG_LIMIT],
            "federator.val_accuracy": f"{ev.accuracy:.6f}",
            "federator.val_loss": f"{ev.loss:.6f}",
            FLAVOUR_TAG: (
                FlavourState.PENDING if plan.tracking.export_flavour else FlavourState.SKIPPED
            ).value,
            **self._privacy_tags(outcome, local_epsilons=local_epsilons),
            **attack_version_tags(plan, outcome),
            **({"federator.task_bundle": plan.task_bundle.digest} if plan.task_bundle else {}),
        }
        name = plan.tracking.registered_model
        mv = self.client.create_model_version(
            name,
            source=f"{self.artifact_uri}/{artifact_path}",
            run_id=self.run_id,
            tags=tags,
            description=f"{plan.name} round {outcome.round}: {decision.verdict.value}",
        )
        version = str(mv.version)
        self.client.set_registered_model_alias(name, CHALLENGER, version)
        release = None
        if decision.promoted:
            self.client.set_registered_model_alias(name, CHAMPION, version)
            if self.releases is not None:
                release = self._release(
                    outcome, version=int(version), folder=out, artifact_path=artifact_path
                )
            lin.champion, lin.champion_round = version, outcome.round
        lin.versions[outcome.round] = version
        lin.parent_version = version
        lin.local_epsilons = local_epsilons
        return version, release

    def _local_epsilons(self, outcome: RoundOutcome) -> dict[str, float]:
        """Each client's largest local-DP ε in this model's ancestry, this round included
        (a new dict: the lineage changes only once the version is registered)."""
        epsilons = dict(self.lineage.local_epsilons)
        for c in outcome.train_clients:
            if MetricName.DP_EPSILON in c.metrics:
                eps = float(c.metrics[MetricName.DP_EPSILON])
                epsilons[c.pseudonym] = max(eps, epsilons.get(c.pseudonym, 0.0))
        return epsilons

    def _privacy_tags(
        self, outcome: RoundOutcome, *, local_epsilons: dict[str, float]
    ) -> dict[str, str]:
        """``federator.privacy.*``: the protections, δ and the largest ε among the clients
        whose updates this model descends from (local DP) and the central accountant's ε."""
        p = self.plan.privacy
        modes = [
            name
            for name, on in (("local-dp", p.local), ("central-dp", p.central), ("secagg", p.secagg))
            if on is not None
        ]
        tags = {"federator.privacy": "+".join(modes) or "none"}
        if p.local is not None:
            tags["federator.privacy.local.delta"] = f"{p.local.delta:g}"
            if local_epsilons:
                tags["federator.privacy.local.max_epsilon"] = f"{max(local_epsilons.values()):.6f}"
        if "central-epsilon" in outcome.privacy:
            tags["federator.privacy.central.epsilon"] = f"{outcome.privacy['central-epsilon']:.6f}"
            tags["federator.privacy.central.delta"] = f"{outcome.privacy['central-delta']:g}"
        return tags

    def _release(
        self, outcome: RoundOutcome, *, version: int, folder: Path, artifact_path: str
    ) -> SignedRelease:
        """Have the release service sign the new champion; keep statement and envelope on
        its version."""
        assert self.releases is not None
        assert outcome.server_eval is not None
        assert outcome.decision is not None
        plan, previous = self.plan, self.lineage.champion
        release = self.releases.sign(
            PromotedVersion(
                version=version,
                previous_version=int(previous) if previous else None,
                round=outcome.round,
                run_id=self.run_id,
                reasons=outcome.decision.reasons,
                metrics={
                    "accuracy": outcome.server_eval.accuracy,
                    "loss": outcome.server_eval.loss,
                },
                folder=folder,
            )
        )
        signed = self.staging / f"release-{version}"
        signed.mkdir()
        (signed / "statement.json").write_bytes(release.statement)
        (signed / "envelope.json").write_text(release.envelope)
        for name in BUNDLE_FILES:  # the task bundle the version was trained with, if any
            if name in release.files:
                (signed / name).write_bytes(release.files[name])
        self.client.log_artifacts(
            self.run_id, str(signed), artifact_path=f"{artifact_path}/release"
        )
        self.client.set_model_version_tag(
            plan.tracking.registered_model,
            str(version),
            "federator.release.key_id",
            self.releases.key_id,
        )
        return release

    def stored_release(self, version: str, round_: int) -> SignedRelease:
        """A release registered earlier, read back from MLflow (for a resumed federation)."""
        folder = self.staging / f"stored-{version}"
        folder.mkdir(exist_ok=True)
        base = f"models/round-{round_:04d}"
        files = {}
        statement = Path(
            self.client.download_artifacts(
                self.run_id, f"{base}/release/statement.json", str(folder)
            )
        ).read_bytes()
        names = {s["name"] for s in json.loads(statement)["subject"]}
        for name in sorted(names):
            path = f"{base}/release/{name}" if name in BUNDLE_FILES else f"{base}/{name}"
            local = self.client.download_artifacts(self.run_id, path, str(folder))
            files[name] = Path(local).read_bytes()
        envelope = Path(
            self.client.download_artifacts(
                self.run_id, f"{base}/release/envelope.json", str(folder)
            )
        ).read_text()
        return SignedRelease(
            version=int(version), round=round_, statement=statement, envelope=envelope, files=files
        )

    def without_flavour(self, *, through_round: int) -> list[tuple[str, int]]:
        """``(version, round)`` of this run's versions up to ``through_round`` whose pytorch
        flavour is still missing (the exporter had not got to them before a crash)."""
        name, out = self.plan.tracking.registered_model, []
        waiting = (FlavourState.PENDING.value, FlavourState.FAILED.value)
        for v in self.client.search_model_versions(f"name = '{name}'"):
            round_ = int(v.tags.get("federator.round", 0))
            mine = v.run_id == self.run_id and round_ <= through_round
            if mine and v.tags.get(FLAVOUR_TAG) in waiting:
                out.append((str(v.version), round_))
        return sorted(out, key=lambda vr: vr[1])

    def stage_weights(self, round_: int) -> Path:
        """Download a registered round's ``weights.safetensors`` into staging."""
        folder = self.staging / f"round-{round_:04d}"
        folder.mkdir(exist_ok=True)
        local = self.client.download_artifacts(
            self.run_id, f"models/round-{round_:04d}/weights.safetensors", str(folder)
        )
        return Path(local)

    def drop_orphans(self, *, after_round: int) -> list[str]:
        """Delete versions of this run registered after ``after_round`` (never checkpointed)
        and point the aliases back at the checkpoint's lineage. Returns the deleted ones."""
        name = self.plan.tracking.registered_model
        dropped = []
        for v in self.client.search_model_versions(f"name = '{name}'"):
            if v.run_id == self.run_id and int(v.tags.get("federator.round", 0)) > after_round:
                self.client.delete_model_version(name, str(v.version))
                dropped.append(str(v.version))
        if self.lineage.parent_version is not None:
            self.client.set_registered_model_alias(name, CHALLENGER, self.lineage.parent_version)
        if self.lineage.champion is not None:
            self.client.set_registered_model_alias(name, CHAMPION, self.lineage.champion)
        return dropped
