"""What a federation reports while it runs, and the observer protocol that receives it.

The round loop (`federator.server.federation.rounds`) knows nothing about MLflow or
terminals: it emits these events, and observers — MLflow tracking, the progress display,
tests — react to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from flwr.app import ArrayRecord

from federator.client.tasks import Evaluation
from federator.server.federation.checkpoint import Checkpoint
from federator.server.federation.durability import DurabilityReport
from federator.server.federation.gate import Decision
from federator.server.federation.monitoring import NodeServing
from federator.server.plan import FederationPlan


@dataclass(frozen=True, kw_only=True)
class NodeEntry:
    """A node as the coordinator knows it. ``pseudonym`` is what leaves the coordinator.
    ``refused``: why the node takes no part in this run (nodes named by pseudonym), if so."""

    node_id: int
    label: str
    pseudonym: str
    version: str
    installed: int = 0
    refused: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientResult:
    """One client's accepted reply in a round."""

    pseudonym: str
    num_examples: int
    metrics: Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class ClientRefusal:
    """A reply that was rejected (or an error a client sent), with the reason."""

    pseudonym: str
    phase: str
    reason: str


class RoundStatus(StrEnum):
    """Whether a round produced a new global model."""

    COMPLETED = "completed"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class RoundOutcome:
    """Everything that happened in one round.

    For a ``SKIPPED`` round (too few accepted updates) ``arrays``, ``server_eval`` and
    ``decision`` are ``None`` and ``skip_reason`` says why; no model version is made.
    """

    round: int
    status: RoundStatus
    arrays: ArrayRecord | None = field(repr=False)
    sampled: int
    train_clients: Sequence[ClientResult]
    eval_clients: Sequence[ClientResult]
    refusals: Sequence[ClientRefusal]
    train_metrics: Mapping[str, float]
    eval_metrics: Mapping[str, float]
    server_eval: Evaluation | None
    decision: Decision | None
    wall_time: float
    skip_reason: str | None = None
    checkpoint: Checkpoint | None = field(default=None, repr=False)
    # Central DP spent after this round (``central-epsilon``, ``central-delta``), if accounted.
    privacy: Mapping[str, float] = field(default_factory=dict)
    # What the nodes' model services reported in this round's replies (node serve).
    serving: Sequence[NodeServing] = ()
    # A simulation's ``[attack]``: the attackers (partition labels) whose training replies
    # came in this round, and those of them whose updates passed screening (into aggregation).
    attackers: Sequence[str] = ()
    attackers_accepted: Sequence[str] = ()

    @property
    def participants(self) -> int:
        return len(self.train_clients)


@dataclass(frozen=True, kw_only=True)
class FederationStarted:
    """The federation is about to run its first round."""

    plan: FederationPlan
    nodes: Sequence[NodeEntry]
    initial_eval: Evaluation
    resumed_after: int = 0
    # A resumed run (``resumed_after`` is 0 when it crashed before its first commit).
    resumed: bool = False
    run_id: str = ""
    example_input: object = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class FederationSummary:
    """How the federation ended (after every observer finished its work)."""

    plan: FederationPlan
    outcomes: Sequence[RoundOutcome]
    duration: float
    run_id: str | None = None
    versions: Mapping[int, str] = field(default_factory=dict)
    champion_round: int | None = None
    champion_version: str | None = None
    ui_command: str | None = None
    # Why the federation ended before its last round (e.g. the central DP budget), if it did.
    stop_reason: str | None = None
    # What was durable when: the last committed round and the commit lag.
    durability: DurabilityReport | None = None

    @property
    def completed(self) -> list[RoundOutcome]:
        return [o for o in self.outcomes if o.status is RoundStatus.COMPLETED]

    def best(self) -> RoundOutcome | None:
        """The completed round with the best server-side accuracy."""
        done = [o for o in self.completed if o.server_eval is not None]
        return max(
            done, key=lambda o: o.server_eval.accuracy if o.server_eval else 0.0, default=None
        )


class Observer(Protocol):
    """Receives a federation's events, in order, from the thread running the rounds."""

    def on_start(self, event: FederationStarted) -> None: ...

    def on_round(self, outcome: RoundOutcome) -> None: ...

    def on_waiting(self, connected: int, needed: int) -> None: ...
