"""The release channel: sign each new champion and push it to the nodes, in-band.

When the gate promotes a model, the tracking worker (after registering the version) asks the
`ReleaseSigner` for a signed release — an in-toto statement over ``weights.safetensors`` and
``lineage.json`` in a DSSE envelope — and stores statement and envelope as artifacts of that
model version. The `ReleaseChannel`, running in the round loop's thread, then sends it to every
connected node that does not have it yet, as a ``query.release`` Flower message; each node
verifies it against its own pinned key and answers installed or refused (with the reason).
A node that could not be reached gets the release the next time the channel runs (after every
round and once more at the end); a node that refused a version is not asked again for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

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
    """One push of one release to some nodes."""

    version: int
    round: int
    deliveries: Sequence[Delivery]

    def count(self, status: DeliveryStatus) -> int:
        return sum(d.status == status for d in self.deliveries)


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
    ) -> SignedRelease:
        """Sign the release of ``folder``'s weights and lineage as ``model`` ``version``."""
        files = {name: (folder / name).read_bytes() for name in RELEASED_FILES}
        predicate = Predicate(
            model=model,
            version=version,
            previous_version=previous_version,
            round=round,
            federation=federation,
            federation_run_id=run_id,
            task=task,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
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
    """Delivers the newest signed release to connected nodes that do not have it.

    ``source`` yields releases signed since the last call (thread-safe); ``report`` receives
    each push's outcome. Nodes' installed versions start from what they reported when they
    introduced themselves.
    """

    def __init__(
        self,
        *,
        grid_nodes: Callable[[], Sequence[int]],
        exchange: Exchange,
        directory: NodeDirectory,
        source: Callable[[], list[SignedRelease]],
        report: Callable[[DeliveryReport], None],
        timeout: float = 120.0,
    ) -> None:
        self._nodes = grid_nodes
        self._exchange = exchange
        self._directory = directory
        self._source = source
        self._report = report
        self._timeout = timeout
        self._lock = threading.Lock()
        self.latest: SignedRelease | None = None
        self._installed: dict[int, int] = {}
        self._refused: dict[int, int] = {}

    # The channel is an observer of the round loop: it runs after every round.
    def on_waiting(self, connected: int, needed: int) -> None:
        """Nothing to deliver before the first round."""

    def on_start(self, event: object) -> None:
        """Nothing to deliver before the first round."""

    def on_round(self, outcome: object) -> None:
        self.run()

    def installed(self, node_id: int) -> int:
        return self._installed.get(node_id, self._directory.installed(node_id))

    def run(self) -> DeliveryReport | None:
        """Take new releases from the source and push the newest where it is missing."""
        with self._lock:
            for release in self._source():
                if self.latest is None or release.version > self.latest.version:
                    self.latest = release
            latest = self.latest
            if latest is None:
                return None
            targets = [
                n
                for n in self._nodes()
                if self.installed(n) < latest.version and self._refused.get(n) != latest.version
            ]
            if not targets:
                return None
            messages = [
                Message(
                    content=release_content(latest),
                    dst_node_id=n,
                    message_type=f"{MessageType.QUERY}.{RELEASE_ACTION}",
                )
                for n in targets
            ]
            replies = {
                r.metadata.src_node_id: r for r in self._exchange(messages, timeout=self._timeout)
            }
            deliveries = [self._outcome(n, replies.get(n), latest) for n in targets]
        report = DeliveryReport(version=latest.version, round=latest.round, deliveries=deliveries)
        self._report(report)
        return report

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
