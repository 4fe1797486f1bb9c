"""The round loop: sample, train, screen, aggregate, evaluate, gate — and tell observers.

Federator drives a Flower strategy's four steps itself instead of calling
``Strategy.start``, because a serious federation needs what ``start`` does not give: waiting
until the nodes it needs are connected (``start`` samples before they are, and silently uses
fewer), skipping a round that got too few good updates instead of failing the run, a
server-side gate on every candidate, and events for MLflow and the progress display.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.exception import PrivacyBudgetExhausted as CentralBudgetExhausted
from flwr.serverapp.strategy import Strategy

from federator import AggregationFailed, FederationFailed
from federator.client.tasks import Evaluation
from federator.client.weights import arrays_to_numpy
from federator.privacy.central import CentralDp, central_dp
from federator.server.federation._secagg_round import SecAggTraining
from federator.server.federation.checkpoint import Checkpointer, Component, State
from federator.server.federation.events import (
    ClientResult,
    FederationStarted,
    Observer,
    RoundOutcome,
    RoundStatus,
)
from federator.server.federation.exchange import Exchange
from federator.server.federation.gate import Candidate, Decision, Gate
from federator.server.federation.instructions import (
    ServerEvaluator,
    initial_arrays,
    instructions_for,
)
from federator.server.federation.nodes import NodeDirectory
from federator.server.federation.reporting import RoundReport
from federator.server.plan import FederationPlan
from federator.server.plan.config import GateMetric
from federator.simulations.attacks.adversary import Adversary
from federator.strategies import Guarded, Screened
from federator.strategies.guarded import Evaluated, Trained

MAX_CONSECUTIVE_SKIPS = 3


def _spread(screened: Screened) -> dict[str, float]:
    """The round's update-norm spread (max ÷ median), MLflow's ``train/update-norm-spread``."""
    return {} if screened.spread is None else {"update-norm-spread": screened.spread}


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    """The scalar entries of an aggregated MetricRecord."""
    return {k: float(v) for k, v in (record or {}).items() if isinstance(v, int | float)}


@dataclass(frozen=True)
class _TrainPhase:
    result: Trained
    sampled: int
    skip_reason: str | None
    attackers: tuple[str, ...] = ()

    @property
    def attackers_accepted(self) -> tuple[str, ...]:
        accepted = {r.label for r in self.result.screened.accepted}
        return tuple(a for a in self.attackers if a in accepted)


@dataclass
class _LoopState:
    """Where the round loop is: the global model, the last round run and how many rounds in
    a row were skipped (a checkpoint part, `Component.LOOP`)."""

    arrays: ArrayRecord
    last_round: int = 0
    consecutive_skips: int = 0

    def state_dict(self) -> State:
        return {
            "round": self.last_round,
            "consecutive_skips": self.consecutive_skips,
            "arrays": arrays_to_numpy(self.arrays),
        }

    def load_state_dict(self, state: State) -> None:
        self.last_round = int(state["round"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in state["arrays"].items()})


class Federation:
    """Runs a plan's rounds on a grid and reports to observers.

    ``exchange`` sends and collects messages (its cancel event stops the federation between
    polls); ``clock`` is injectable so tests can control round wall times. The loop, gate,
    strategy state and central DP accountant register with ``checkpointer`` (see `run`).
    """

    def __init__(
        self,
        plan: FederationPlan,
        *,
        grid: Grid,
        evaluator: ServerEvaluator,
        directory: NodeDirectory,
        observers: Sequence[Observer],
        exchange: Exchange | None = None,
        node_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        run_id: str = "",
        checkpointer: Checkpointer | None = None,
        start_from: ArrayRecord | None = None,
    ):
        self.plan = plan
        self.run_id = run_id
        self._grid = directory.grid  # only nodes that introduced (and proved) themselves
        self._exchanger = exchange or Exchange(grid)
        self._evaluate_server = evaluator
        self._directory = directory
        self._report = RoundReport(directory)  # who said what, named by the directory
        self._observers = list(observers)
        self._node_timeout = node_timeout
        self._clock = clock
        self.gate = Gate(plan.gate)
        self._base = plan.strategy.build()
        central = plan.privacy.central
        self.central: CentralDp | None = central_dp(self._base, central) if central else None
        # Central DP keeps Flower's own FedAvg arithmetic inside its wrappers: the accountant
        # accepts only `FedAvg.aggregate_train`, and the noise dwarfs the averaging's cost.
        inner: Strategy = (
            self.central.strategy if self.central else plan.strategy.aggregating(self._base)
        )
        self.strategy = Guarded(
            inner, seed=plan.seed, node_order=directory.order_key, rules=plan.screening
        )
        # A simulation's attackers, poisoning their replies before screening sees them.
        self._adversary = Adversary(plan.attack) if plan.attack is not None else None
        self._loop = _LoopState(arrays=start_from or initial_arrays(plan.task(), plan.seed))
        self.checkpointer = checkpointer or Checkpointer()
        self.checkpointer.register(Component.LOOP, self._loop)
        self.checkpointer.register(Component.GATE, self.gate)
        self.checkpointer.register(Component.STRATEGY, plan.strategy.spec.state_of(self._base))
        if self.central is not None:
            self.checkpointer.register(Component.PRIVACY, self.central)
        # Why the federation ended before its last round (None: it did not).
        self.stop_reason: str | None = None
        self._config = instructions_for(plan, run_id=run_id).to_config()
        self._secagg = (
            SecAggTraining(
                plan.privacy.secagg,
                grid=self._grid,
                exchange=self._exchanger,
                directory=directory,
                round_timeout=plan.strategy.round_timeout,
                workflow=self._exchanger.compat.secagg_workflow,
            )
            if plan.privacy.secagg is not None
            else None
        )

    def run(self, *, resumed: bool = False) -> list[RoundOutcome]:
        """Wait for nodes, then run every round after the last one run (0, unless the
        checkpointer restored a checkpoint); returns the outcome of each round run here, with
        the checkpointer's snapshot as the round ended. ``resumed``: this continues an
        interrupted run (even one with no checkpoint yet)."""
        plan, state = self.plan, self._loop
        needed = plan.strategy.sampling.min_available_nodes
        self._directory.wait_for(needed, timeout=self._node_timeout, on_wait=self._waiting)
        started = FederationStarted(
            plan=plan,
            nodes=self._directory.admitted_entries(),
            initial_eval=self._evaluate_server(state.arrays),
            example_input=self._evaluate_server.example_input(),
            resumed_after=state.last_round,
            resumed=resumed or state.last_round > 0,
            run_id=self.run_id,
        )
        for obs in self._observers:
            obs.on_start(started)
        outcomes: list[RoundOutcome] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="federator-eval") as pool:
            self._run_rounds(state, outcomes, pool)
        return outcomes

    def _run_rounds(
        self, state: _LoopState, outcomes: list[RoundOutcome], server_side: Executor
    ) -> None:
        for rnd in range(state.last_round + 1, self.plan.rounds + 1):
            self._exchanger.check()
            try:
                outcome = self._round(rnd, state.arrays, server_side)
            except CentralBudgetExhausted as err:
                # Raised before any message of this round was sent: nothing was released.
                self.stop_reason = f"round {rnd} would exceed the central DP budget: {err}"
                return
            if outcome.status is RoundStatus.COMPLETED and outcome.arrays is not None:
                state.arrays = outcome.arrays
                state.consecutive_skips = 0
            else:
                state.consecutive_skips += 1
            state.last_round = rnd
            outcome = replace(outcome, checkpoint=self.checkpointer.snapshot(rnd))
            outcomes.append(outcome)
            for obs in self._observers:
                obs.on_round(outcome)
            if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise FederationFailed(
                    f"{MAX_CONSECUTIVE_SKIPS} rounds in a row were skipped; the last "
                    f"one because {outcome.skip_reason}"
                )

    def _waiting(self, connected: int, needed: int) -> None:
        for obs in self._observers:
            obs.on_waiting(connected, needed)

    def _fresh_config(self) -> ConfigRecord:
        # Strategies write into the config they get (``server-round``): never share one.
        return ConfigRecord(dict(self._config))

    def _exchange(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        return self._exchanger(messages, timeout=self.plan.strategy.round_timeout)

    def _configure_train(self, rnd: int, arrays: ArrayRecord) -> list[Message]:
        try:
            return list(
                self.strategy.configure_train(rnd, arrays, self._fresh_config(), self._grid)
            )
        except ValueError as err:
            if self.central is None or self.central.accountant is None:
                raise
            # Flower's accounted wrapper insists on the sample size it was planned with.
            raise FederationFailed(
                f"round {rnd}: central DP accounting cannot account this round: {err}"
            ) from err

    def _round(self, rnd: int, arrays: ArrayRecord, server_side: Executor) -> RoundOutcome:
        """One round: train, then (if an aggregate came out) evaluate and decide."""
        t0 = self._clock()
        self._directory.refresh()
        train = self._train(rnd, arrays)
        outcome = RoundOutcome(
            round=rnd,
            status=RoundStatus.SKIPPED,
            arrays=None,
            sampled=train.sampled,
            train_clients=self._report.results(train.result.screened),
            eval_clients=[],
            refusals=[
                *self._report.identity_refusals(),
                *self._report.refusals(train.result.screened, "train"),
            ],
            train_metrics=_scalars(train.result.metrics) | _spread(train.result.screened),
            eval_metrics={},
            server_eval=None,
            decision=None,
            wall_time=0.0,
            skip_reason=train.skip_reason,
            privacy=self.central.spent() if self.central else {},
            attackers=train.attackers,
            attackers_accepted=train.attackers_accepted,
        )
        if train.skip_reason is not None or train.result.arrays is None:
            return self._report.with_serving(
                replace(outcome, wall_time=self._clock() - t0), train.result.screened
            )
        new_arrays = train.result.arrays
        evaluated, server_eval = self._evaluate(rnd, new_arrays, server_side)
        eval_clients = self._report.results(evaluated.screened)
        return self._report.with_serving(
            replace(
                outcome,
                status=RoundStatus.COMPLETED,
                arrays=new_arrays,
                eval_clients=eval_clients,
                refusals=[
                    *outcome.refusals,
                    *self._report.refusals(evaluated.screened, "evaluate"),
                ],
                eval_metrics=_scalars(evaluated.metrics),
                server_eval=server_eval,
                decision=self._decide(rnd, server_eval, eval_clients),
                wall_time=self._clock() - t0,
            ),
            train.result.screened,
            evaluated.screened,
        )

    def _train(self, rnd: int, arrays: ArrayRecord) -> _TrainPhase:
        """Sample, send, screen and aggregate; the skip reason if the round cannot go on."""
        sampling, timeout = self.plan.strategy.sampling, self.plan.strategy.round_timeout
        # Flower's sampling waits forever for its minimum of nodes: wait here, boundedly.
        short = self._directory.short_of(
            max(sampling.min_available_nodes, sampling.min_train_nodes),
            timeout=timeout,
            on_wait=self._waiting,
        )
        if short is not None:
            return _TrainPhase(Trained(None, None, Screened([], [])), 0, short)
        train_msgs = self._configure_train(rnd, arrays)
        skip_reason: str | None = None
        attackers: tuple[str, ...] = ()
        if self._secagg is not None:  # SecAgg+: the coordinator learns only the mean update
            secagg = self._secagg(rnd, arrays, train_msgs)
            result = Trained(secagg.arrays, secagg.metrics, secagg.screened)
            skip_reason = secagg.skip_reason
            if self._adversary is not None:  # label flipping: the poison is in the data
                attackers = self._adversary.among(r.label for r in result.screened.accepted)
        else:
            replies: Sequence[Message] = self._exchange(train_msgs)
            if self._adversary is not None:
                attackers = self._adversary.attackers_in(replies)
                replies = self._adversary.poison(rnd, arrays, replies)
            try:
                result = self.strategy.train_round(rnd, replies)
            except (AggregationError, InconsistentMessageReplies, AggregationFailed) as err:
                result = Trained(None, None, Screened([], []))
                skip_reason = f"aggregation failed: {err}"
        accepted = len(result.screened.accepted)
        if skip_reason is None and (
            result.arrays is None or accepted < self.plan.strategy.min_replies
        ):
            skip_reason = (
                f"{accepted} of {len(train_msgs)} sampled clients returned an "
                f"acceptable update (minimum {self.plan.strategy.min_replies})"
            )
        return _TrainPhase(result, len(train_msgs), skip_reason, attackers)

    def _evaluate(
        self, rnd: int, arrays: ArrayRecord, server_side: Executor
    ) -> tuple[Evaluated, Evaluation]:
        """Clients evaluate on their splits while the server evaluates on its hold-out."""
        sampling = self.plan.strategy.sampling
        short = self._directory.short_of(
            max(sampling.min_available_nodes, sampling.min_evaluate_nodes), timeout=0.0
        )
        eval_msgs = (
            []  # too few nodes left to sample for evaluation: the server's hold-out decides
            if short or sampling.fraction_evaluate == 0
            else list(
                self.strategy.configure_evaluate(rnd, arrays, self._fresh_config(), self._grid)
            )
        )
        server_future = server_side.submit(self._evaluate_server, arrays)
        evaluated = self.strategy.evaluate_round(rnd, self._exchange(eval_msgs))
        return evaluated, server_future.result()

    def _decide(
        self, rnd: int, server_eval: Evaluation, eval_clients: Sequence[ClientResult]
    ) -> Decision:
        """The gate's verdict on this round's model (promoting it if it passes)."""
        metric = self.plan.gate.metric
        candidate = Candidate(
            round=rnd,
            value=server_eval.accuracy if metric is GateMetric.ACCURACY else server_eval.loss,
            client_accuracies={
                c.pseudonym: c.metrics["accuracy"] for c in eval_clients if "accuracy" in c.metrics
            },
        )
        decision = self.gate.decide(candidate)
        if decision.promoted:
            self.gate.promote(candidate)
        return decision
