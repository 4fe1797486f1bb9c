"""PNG plots of a federation, logged as artifacts of its MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from federator.client.wire import MetricName
from federator.server.federation.events import RoundOutcome, RoundStatus


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_rounds(outcomes: Sequence[RoundOutcome], path: Path) -> Path:
    """Server-side validation accuracy and loss per round; promoted rounds are marked."""
    plt = _pyplot()
    done = [o for o in outcomes if o.status is RoundStatus.COMPLETED and o.server_eval]
    rounds = [o.round for o in done]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(
        rounds,
        [o.server_eval.accuracy for o in done if o.server_eval],
        marker="o",
        label="server hold-out",
    )
    client_acc = [
        (o.round, o.eval_metrics["accuracy"]) for o in done if "accuracy" in o.eval_metrics
    ]
    if client_acc:
        ax_acc.plot(
            *zip(*client_acc, strict=True), marker=".", linestyle="--", label="clients (weighted)"
        )
    promoted = [
        (o.round, o.server_eval.accuracy)
        for o in done
        if o.decision and o.decision.promoted and o.server_eval
    ]
    if promoted:
        ax_acc.scatter(
            *zip(*promoted, strict=True),
            s=120,
            facecolors="none",
            edgecolors="green",
            label="promoted to champion",
            zorder=3,
        )
    ax_acc.set(title="Validation accuracy", xlabel="round", ylabel="accuracy")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(loc="lower right")
    ax_loss.plot(
        rounds,
        [o.server_eval.loss for o in done if o.server_eval],
        marker="o",
        color="tab:red",
        label="server hold-out",
    )
    ax_loss.set(title="Validation loss", xlabel="round", ylabel="cross-entropy")
    ax_loss.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_clients(outcomes: Sequence[RoundOutcome], path: Path) -> Path:
    """Each client's validation accuracy per round (clients by pseudonym)."""
    plt = _pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for o in outcomes:
        for c in o.eval_clients:
            if "accuracy" in c.metrics:
                series.setdefault(c.pseudonym, []).append((o.round, c.metrics["accuracy"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pseudonym, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), marker=".", label=pseudonym)
    ax.set(title="Per-client validation accuracy", xlabel="round", ylabel="accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if 0 < len(series) <= 20:
        ax.legend(fontsize="small", ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_privacy(outcomes: Sequence[RoundOutcome], path: Path) -> Path:
    """ε spent over rounds: each client's local DP-SGD ε in this run (as the client reported
    it) and the central DP accountant's ε, when the federation has them."""
    plt = _pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for o in outcomes:
        for c in o.train_clients:
            if MetricName.DP_EPSILON in c.metrics:
                series.setdefault(c.pseudonym, []).append(
                    (o.round, c.metrics[MetricName.DP_EPSILON])
                )
    central = [(o.round, o.privacy["central-epsilon"]) for o in outcomes if o.privacy]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pseudonym, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), marker=".", label=f"{pseudonym} (local)")
    if central:
        ax.plot(
            *zip(*central, strict=True), marker="o", color="black", label="central (accountant)"
        )
    ax.set(title="Privacy spent (ε) over rounds", xlabel="round", ylabel="ε")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if 0 < len(series) + bool(central) <= 20:
        ax.legend(fontsize="small", ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
