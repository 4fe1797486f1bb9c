"""What a person sees: a line per round while it runs, and a closing summary.

`RichProgress` draws on a terminal (a progress bar, a row per round, a summary table);
`LogProgress` writes the same facts as plain log lines for when the ServerApp runs inside a
Flower SuperLink (``flwr run``), where only logs reach the user.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from federator.client.wire import DeliveryStatus, MetricName
from federator.server.federation.events import (
    FederationStarted,
    FederationSummary,
    RoundOutcome,
    RoundStatus,
)
from federator.server.plan import FederationPlan
from federator.server.releases import DeliveryReport


def _client_range(o: RoundOutcome) -> str:
    accs = [c.metrics["accuracy"] for c in o.eval_clients if "accuracy" in c.metrics]
    return f"{min(accs):.3f}–{max(accs):.3f}" if accs else "–"


_COLUMNS = (
    ("round", 5),
    ("clients", 7),
    ("val acc", 7),
    ("val loss", 8),
    ("client acc", 11),
    ("time", 6),
    ("saved", 5),
    ("gate", 0),
)


def _round_cells(o: RoundOutcome, saved: int) -> list[str]:
    """Cells in `_COLUMNS` order; ``saved``: the last round committed in MLflow so far; the
    gate cell carries the first failing reason."""
    time_cell = f"{o.wall_time:.1f}s"
    saved_cell = str(saved) if saved else "–"
    if o.status is RoundStatus.SKIPPED:
        return [
            str(o.round),
            f"{o.participants}/{o.sampled}",
            "–",
            "–",
            "–",
            time_cell,
            saved_cell,
            f"skipped: {o.skip_reason}",
        ]
    assert o.server_eval is not None
    assert o.decision is not None
    gate = "promoted" if o.decision.promoted else f"rejected: {o.decision.reasons[0]}"
    return [
        str(o.round),
        f"{o.participants}/{o.sampled}",
        f"{o.server_eval.accuracy:.4f}",
        f"{o.server_eval.loss:.4f}",
        _client_range(o),
        time_cell,
        saved_cell,
        gate,
    ]


def _line(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) if w else c for c, (_, w) in zip(cells, _COLUMNS, strict=True))


def _run_line(event: FederationStarted) -> str:
    resumed = (
        f"resumed after round {event.resumed_after}, the last one saved; "
        if event.resumed_after
        else "resumed from round 1 (no round had been saved); "
        if event.resumed
        else ""
    )
    return (
        f"{resumed}MLflow run {event.run_id} (after a crash: federator simulate ... "
        f"--resume {event.run_id})"
    )


def attack_plan_line(plan: FederationPlan) -> str | None:
    """The simulation's attack, said once at the start (None: no ``[attack]``)."""
    a = plan.attack
    if a is None:
        return None
    return f"attack (simulation): {a.summary()}"


def attack_line(o: RoundOutcome) -> str | None:
    """Which attackers sent this round's poisoned replies, and how many passed screening."""
    if not o.attackers:
        return None
    return (
        f"attacked by {', '.join(o.attackers)}: "
        f"{len(o.attackers_accepted)} of {len(o.attackers)} past screening"
    )


def held_back_line(round_: int, saved_through: int) -> str:
    """What the display says when the round loop waits for MLflow."""
    return (
        f"round {round_} waits for MLflow: saved through round {saved_through} "
        f"(tracking.max_unsaved_rounds)"
    )


def release_line(report: DeliveryReport) -> str:
    """One line on where a signed release went."""
    n = len(report.deliveries)
    return (
        f"release: version {report.version} (round {report.round}) installed on "
        f"{report.count(DeliveryStatus.INSTALLED)}/{n} node(s)"
        + (f", refused by {refused}" if (refused := report.count(DeliveryStatus.REFUSED)) else "")
        + (f", {lost} unreachable" if (lost := report.count(DeliveryStatus.UNREACHABLE)) else "")
    )


def summary_table(s: FederationSummary) -> Table:
    """The closing summary as a rich table."""
    t = Table(title=f"Federation {s.plan.name!r} finished", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    done = s.completed
    t.add_row(
        "rounds",
        f"{len(done)} completed, {len(s.outcomes) - len(done)} skipped, {s.duration:.1f} s",
    )
    best = s.best()
    if best is not None and best.server_eval is not None:
        t.add_row(
            "best validation accuracy", f"{best.server_eval.accuracy:.4f} (round {best.round})"
        )
    champ = next((o for o in s.outcomes if o.round == s.champion_round), None)
    if s.champion_version is not None and champ is not None and champ.server_eval is not None:
        t.add_row(
            "champion",
            f"{s.plan.tracking.registered_model} version {s.champion_version} (round "
            f"{s.champion_round}, validation accuracy {champ.server_eval.accuracy:.4f})",
        )
    else:
        t.add_row("champion", "none: no round passed the gate")
    t.add_row("model versions", str(len(s.versions)))
    if s.durability is not None:
        t.add_row("saved in MLflow", s.durability.describe())
    if s.stop_reason:
        t.add_row("stopped early", s.stop_reason)
    spent = next((o.privacy for o in reversed(s.outcomes) if o.privacy), None)
    if spent and "central-epsilon" in spent:
        t.add_row(
            "central DP spent",
            f"ε = {spent['central-epsilon']:.3f} at δ = {spent.get('central-delta', 0):g}",
        )
    local = [
        c.metrics[MetricName.DP_EPSILON]
        for o in s.outcomes
        for c in o.train_clients
        if MetricName.DP_EPSILON in c.metrics
    ]
    if local:
        t.add_row("local DP spent", f"largest ε of a client in this run: {max(local):.3f}")
    if s.run_id:
        t.add_row("MLflow run", s.run_id)
    if s.ui_command:
        t.add_row("open with", s.ui_command)
    return t


def serving_lines(outcome: RoundOutcome) -> list[str]:
    """One line per node whose model service reported something worth seeing: drift, or
    roll-out events (fall-backs first)."""
    lines = []
    for node in outcome.serving:
        r = node.report
        drift = (
            f", drift in {r.drift.drifted_features:.0%} of features (PSI max "
            f"{r.drift.psi_max:.2f}, predictions {r.drift.prediction_js:.2f})"
            if r.drift is not None and r.drift.drifted_features > 0
            else ""
        )
        events = "; ".join(
            f"{e.kind} v{e.candidate}" + (f": {e.reason}" if e.reason else "") for e in r.events
        )
        if drift or events:
            served = f"v{r.version}" if r.version is not None else "no version yet"
            lines.append(
                f"serving {node.pseudonym}: {served}, {r.rows:,} rows{drift}"
                + (f"; {events}" if events else "")
            )
    return lines


class RichProgress:
    """Terminal display: progress bar plus one table row per round."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: int | None = None
        self._last_pending = -1
        self._saved = 0  # written by the tracking thread, read when a row is printed

    def on_waiting(self, connected: int, needed: int) -> None:
        self.console.print(f"[dim]waiting for nodes: {connected}/{needed} connected[/]")

    def on_start(self, event: FederationStarted) -> None:
        p = event.plan
        self.console.print(
            f"[bold]{p.name}[/]: task {p.task_ref}, strategy {p.strategy.name}, "
            f"{p.data.clients} clients, {p.rounds} rounds; initial validation accuracy "
            f"{event.initial_eval.accuracy:.4f}"
        )
        self._saved = event.resumed_after
        self.console.print(f"[dim]{_run_line(event)}[/]", highlight=False)
        if attack := attack_plan_line(p):
            self.console.print(Text(attack, style="magenta"))
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("rounds", total=p.rounds)
        self.console.print(_line([name for name, _ in _COLUMNS]), style="bold", highlight=False)

    def on_round(self, outcome: RoundOutcome) -> None:
        cells = _round_cells(outcome, self._saved)
        style = (
            "green"
            if outcome.decision and outcome.decision.promoted
            else ("yellow" if outcome.status is RoundStatus.COMPLETED else "red")
        )
        *head, gate = cells
        verdict, _, why = gate.partition(": ")
        self.console.print(_line([*head, verdict]), style=style, highlight=False)
        if why:
            self.console.print(Text(f"       ↳ {why}", style="dim"))
        if attack := attack_line(outcome):
            self.console.print(Text(f"       {attack}", style="magenta"))
        for r in outcome.refusals:
            self.console.print(
                Text("       refused ", style="yellow")
                + Text(f"{r.phase} from {r.pseudonym}: {r.reason}")
            )
        for line in serving_lines(outcome):
            self.console.print(Text(f"       {line}", style="cyan"))
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Remove the progress bar (before the summary or an error is printed)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def saved(self, round_: int) -> None:
        self._saved = max(self._saved, round_)

    def held_back(self, round_: int, saved_through: int) -> None:
        self.console.print(f"[dim]{held_back_line(round_, saved_through)}[/]", highlight=False)

    def saving(self, pending: int) -> None:
        if pending != self._last_pending:
            self.console.print(f"[dim]saving to MLflow: {pending} write(s) left[/]")
            self._last_pending = pending

    def on_release(self, report: DeliveryReport) -> None:
        self.console.print(Text(release_line(report), style="cyan"))
        for d in report.deliveries:
            if d.status is not DeliveryStatus.INSTALLED:
                self.console.print(
                    Text(f"       {d.status} ", style="yellow")
                    + Text(f"by {d.pseudonym}: {d.reason}")
                )

    def summary(self, s: FederationSummary) -> None:
        self.stop()
        self.console.print(summary_table(s))


def _flwr_info(message: str) -> None:
    # Flower's logger is the one `flwr run --stream` relays to the user.
    from flwr.common.logger import log

    log(logging.INFO, message)


class LogProgress:
    """The same facts as plain log lines."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self._log = log or _flwr_info
        self._last_pending = -1
        self._saved = 0

    def on_waiting(self, connected: int, needed: int) -> None:
        self._log(f"waiting for nodes: {connected}/{needed} connected")

    def on_start(self, event: FederationStarted) -> None:
        p = event.plan
        self._log(
            f"federation {p.name}: task {p.task_ref}, strategy {p.strategy.name}, "
            f"{p.data.clients} clients, {p.rounds} rounds; initial validation accuracy "
            f"{event.initial_eval.accuracy:.4f}"
        )
        self._saved = event.resumed_after
        self._log(_run_line(event))
        if attack := attack_plan_line(p):
            self._log(attack)

    def on_round(self, outcome: RoundOutcome) -> None:
        cells = _round_cells(outcome, self._saved)
        pairs = zip(cells[1:], _COLUMNS[1:], strict=True)
        self._log(f"round {cells[0]}: " + ", ".join(f"{name} {c}" for c, (name, _) in pairs))
        if attack := attack_line(outcome):
            self._log(f"  {attack}")
        for r in outcome.refusals:
            self._log(f"  refused {r.phase} from {r.pseudonym}: {r.reason}")
        for line in serving_lines(outcome):
            self._log(f"  {line}")

    def stop(self) -> None:
        """Nothing to tear down."""

    def saved(self, round_: int) -> None:
        self._saved = max(self._saved, round_)

    def held_back(self, round_: int, saved_through: int) -> None:
        self._log(held_back_line(round_, saved_through))

    def saving(self, pending: int) -> None:
        if pending != self._last_pending:  # called every poll: say it only when it changes
            self._last_pending = pending
            self._log(f"saving to MLflow: {pending} write(s) left")

    def on_release(self, report: DeliveryReport) -> None:
        self._log(release_line(report))
        for d in report.deliveries:
            if d.status is not DeliveryStatus.INSTALLED:
                self._log(f"  {d.status} by {d.pseudonym}: {d.reason}")

    def summary(self, s: FederationSummary) -> None:
        console = Console(file=io.StringIO(), force_terminal=False, width=120)
        console.print(summary_table(s))
        for line in console.file.getvalue().splitlines():  # type: ignore[attr-defined]
            self._log(line)
