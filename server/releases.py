"""Releases: sign each new champion, and push it to the nodes once it is committed.

One `ReleaseService` per federation owns a release from signature to delivery:

* *signing* — when the gate promotes a model, the tracking writer registers the version and
  asks the service to sign it (`ReleaseService.sign`): an in-toto statement over
  ``weights.safetensors`` and ``lineage.json`` in a DSSE envelope, which the writer stores
  with the version before the round's checkpoint is committed (a resume finds it there);
* *the queue* — only once the checkpoint is committed does the writer hand the release over
  (`ReleaseService.committed`), so no node ever gets a version that a crash could undo;
* *delivery* — in the round loop's thread (Flower's Grid is used from that thread only), after
  every round and once more at the end, the newest committed release goes through the
  `ReleaseChannel` to every connected node that does not have it yet, as a ``query.release``
  message; each node verifies it against its own pinned key and answers installed or refused
  (with the reason). A node that could not be reached gets it the next time; a node that
  refused a version is not asked again for it;
* *reporting* — every push goes to the recorders passed in (`DeliveryRecorder`: MLflow's
  metrics, the display), saying whether it is the first push of that release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from federator.client.bundle import TaskBundle
from federator.client.keys import key_id
from federator.client.release import (
    RELEASED_FILES,
    Gate,
    Predicate,
    build_statement,
    sign_statement,
)
from federator.client.wire import FILE_PREFIX, RELEASE_ACTION, RELEASE_KEY, DeliveryStatus
from federator.server.federation.exchange import Exchange
from federator.server.federation.nodes import NodeDirectory
from federator.server.plan import FederationPlan


@dataclass(frozen=True)
class SignedRelease:
    """A signed release, ready to send: the envelope and the files it covers."""

    version: int
    round: int
    statement: bytes
    envelope: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class Delivery:
    """What one node did with a release."""

    pseudonym: str
    status: DeliveryStatus
    version: int
    reason: str = ""


@dataclass(frozen=True)
class DeliveryReport:
    """One push of one release to some nodes (``first_push``: the first of that release)."""

    version: int
    round: int
    deliveries: Sequence[Delivery]
    first_push: bool = True

    def count(self, status: DeliveryStatus) -> int:
        return sum(d.status == status for d in self.deliveries)


@dataclass(frozen=True, kw_only=True)
class PromotedVersion:
    """A registered version the gate promoted: what its release states, where its files are."""

    version: int
    previous_version: int | None
    round: int
    run_id: str
    reasons: Sequence[str]
    metrics: Mapping[str, float]
    folder: Path


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ReleaseSigner:
    """Signs releases with the federation's Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(
        self,
        *,
        model: str,
        version: int,
        previous_version: int | None,
        round: int,
        federation: str,
        run_id: str,
        task: str,
        reasons: Sequence[str],
        metrics: Mapping[str, float],
        folder: Path,
        bundle: TaskBundle | None = None,
        valid_for: timedelta | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> SignedRelease:
        """Sign the release of ``folder``'s weights and lineage as ``model`` ``version``;
        with the task ``bundle`` the model was trained with, if it has one (nodes keep it
        with the version); nodes refuse it after ``valid_for`` (None: never)."""
        created = now()
        files = {name: (folder / name).read_bytes() for name in RELEASED_FILES}
        files |= bundle.files() if bundle else {}
        predicate = Predicate(
            model=model,
            version=version,
            previous_version=previous_version,
            round=round,
            federation=federation,
            federation_run_id=run_id,
            task=task,
            task_bundle=bundle.digest if bundle else None,
            created_at=created.isoformat(timespec="seconds"),
            expires_at=(created + valid_for).isoformat(timespec="seconds") if valid_for else None,
            gate=Gate(decision="promoted", reasons=list(reasons), metrics=dict(metrics)),
        )
        statement = build_statement(files, predicate)
        return SignedRelease(
            version=version,
            round=round,
            statement=statement,
            envelope=sign_statement(statement, self._key),
            files=files,
        )


def release_content(release: SignedRelease) -> RecordDict:
    """The message content a node's ``query.release`` handler expects."""
    record = ConfigRecord({"envelope": release.envelope})
    for name, data in release.files.items():
        record[FILE_PREFIX + name] = data
    return RecordDict({RELEASE_KEY: record})


class ReleaseChannel:
    """Pushes a release to the connected nodes that do not have it (round loop's thread).

    Nodes' installed versions start from what they reported when they introduced themselves.
    """

    def __init__(
        self,
        *,
        grid_nodes: Callable[[], Sequence[int]],
        exchange: Exchange,
        directory: NodeDirectory,
        timeout: float = 120.0,
    ) -> None:
        self._nodes = grid_nodes
        self._exchange = exchange
        self._directory = directory
        self._timeout = timeout
        self._installed: dict[int, int] = {}
        self._refused: dict[int, int] = {}

    def installed(self, node_id: int) -> int:
        return self._installed.get(node_id, self._directory.installed(node_id))

    def push(self, release: SignedRelease) -> DeliveryReport | None:
        """Send ``release`` where it is missing; ``None`` if every node has it or refused it."""
        targets = [
            n
            for n in self._nodes()
            if self.installed(n) < release.version and self._refused.get(n) != release.version
        ]
        if not targets:
            return None
        messages = [
            Message(
                content=release_content(release),
                dst_node_id=n,
                message_type=f"{MessageType.QUERY}.{RELEASE_ACTION}",
            )
            for n in targets
        ]
        replies = {
            r.metadata.src_node_id: r for r in self._exchange(messages, timeout=self._timeout)
        }
        deliveries = [self._outcome(n, replies.get(n), release) for n in targets]
        return DeliveryReport(version=release.version, round=release.round, deliveries=deliveries)

    def _outcome(self, node_id: int, reply: Message | None, release: SignedRelease) -> Delivery:
        pseudonym = self._directory.entry(node_id).pseudonym
        if reply is None:
            return Delivery(pseudonym, DeliveryStatus.UNREACHABLE, release.version, "no reply")
        if reply.has_error():
            return Delivery(
                pseudonym,
                DeliveryStatus.UNREACHABLE,
                release.version,
                f"node error: {reply.error.reason}",
            )
        record = reply.content.config_records.get(RELEASE_KEY, ConfigRecord())
        status = str(record.get("status", DeliveryStatus.REFUSED))
        if status == DeliveryStatus.INSTALLED:
            self._installed[node_id] = release.version
            return Delivery(pseudonym, DeliveryStatus.INSTALLED, release.version)
        self._refused[node_id] = release.version
        return Delivery(
            pseudonym,
            DeliveryStatus.REFUSED,
            release.version,
            str(record.get("reason", "no reason given")),
        )


class DeliveryRecorder(Protocol):
    """Records where a release went (MLflow's metrics, the display)."""

    def on_release(self, report: DeliveryReport) -> None: ...


class ReleaseService:
    """Signs a federation's champions, queues them once committed, delivers the newest.

    `sign` and `committed` are called from the tracking writer, `deliver` (and the observer
    methods) from the round loop's thread; the queue between them is the only shared state.
    """

    def __init__(
        self,
        signer: ReleaseSigner,
        *,
        plan: FederationPlan,
        channel: ReleaseChannel,
        recorders: Sequence[DeliveryRecorder],
    ) -> None:
        self._signer = signer
        self._plan = plan
        self._channel = channel
        self._recorders = list(recorders)
        self._lock = threading.Lock()
        self._queue: list[SignedRelease] = []
        self._latest: SignedRelease | None = None
        self._pushed_rounds: set[int] = set()

    @property
    def key_id(self) -> str:
        """The signing key's id (tagged on every released version)."""
        return self._signer.key_id

    def sign(self, promoted: PromotedVersion) -> SignedRelease:
        """The signed release of ``promoted`` (not delivered until `committed`)."""
        plan = self._plan
        return self._signer.sign(
            model=plan.tracking.registered_model,
            version=promoted.version,
            previous_version=promoted.previous_version,
            round=promoted.round,
            federation=plan.name,
            run_id=promoted.run_id,
            task=plan.task_ref,
            reasons=promoted.reasons,
            metrics=promoted.metrics,
            folder=promoted.folder,
            bundle=plan.task_bundle,
            valid_for=timedelta(days=plan.release.valid_days) if plan.release else None,
        )

    def committed(self, release: SignedRelease) -> None:
        """``release``'s round is committed: deliver it from the next `deliver` on."""
        with self._lock:
            self._queue.append(release)

    def resume(self, stored: SignedRelease | None, *, pushed_rounds: Iterable[int]) -> None:
        """A resumed federation: offer the champion's ``stored`` release again (it was
        committed before the crash); ``pushed_rounds`` had their releases pushed already."""
        self._pushed_rounds.update(pushed_rounds)
        if stored is not None:
            self.committed(stored)

    def deliver(self) -> DeliveryReport | None:
        """Push the newest committed release where it is missing and report the push
        (call from the round loop's thread)."""
        with self._lock:
            queued, self._queue = self._queue, []
        for release in queued:
            if self._latest is None or release.version > self._latest.version:
                self._latest = release
        if self._latest is None:
            return None
        report = self._channel.push(self._latest)
        if report is None:
            return None
        report = replace(report, first_push=report.round not in self._pushed_rounds)
        self._pushed_rounds.add(report.round)
        for recorder in self._recorders:
            recorder.on_release(report)
        return report

    # The service is an observer of the round loop: it delivers after every round.
    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to deliver before the first round."""

    def on_start(self, event: object) -> None:
        """Nothing to deliver before the first round."""

    def on_round(self, outcome: object) -> None:
        self.deliver()
