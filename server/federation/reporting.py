"""What a round's replies say about each node, named as the directory knows it.

A reply's own label is never used: the node's entry in the `NodeDirectory` (its proven name in
a deployment) gives the pseudonym, so a node cannot report under another's name. The round
loop (`federator.server.federation.rounds`) builds its `RoundOutcome` from these.
"""

from __future__ import annotations

from dataclasses import replace

from federator.server.federation.events import ClientRefusal, ClientResult, RoundOutcome
from federator.server.federation.monitoring import collect
from federator.server.federation.nodes import NodeDirectory
from federator.strategies import Screened


class RoundReport:
    """Accepted replies as results, rejected ones as refusals, serving reports, identity
    refusals — each under the directory's pseudonym."""

    def __init__(self, directory: NodeDirectory) -> None:
        self._directory = directory

    def _pseudonym(self, node_id: int) -> str:
        return self._directory.entry(node_id).pseudonym

    def results(self, screened: Screened | None) -> list[ClientResult]:
        if screened is None:
            return []
        return [
            ClientResult(
                pseudonym=self._pseudonym(r.node_id),
                num_examples=r.num_examples,
                metrics=dict(r.metrics),
            )
            for r in screened.accepted
        ]

    def refusals(self, screened: Screened | None, phase: str) -> list[ClientRefusal]:
        if screened is None:
            return []
        return [
            ClientRefusal(pseudonym=self._pseudonym(r.node_id), phase=phase, reason=r.reason)
            for r in screened.rejected
        ]

    def identity_refusals(self) -> list[ClientRefusal]:
        """Nodes refused since the last round because they did not prove who they are."""
        return [
            ClientRefusal(pseudonym=e.pseudonym, phase="identity", reason=e.refused or "")
            for e in self._directory.take_refused()
        ]

    def with_serving(self, outcome: RoundOutcome, *screened: Screened | None) -> RoundOutcome:
        """``outcome`` with the serving reports its replies carried — rejected updates'
        replies too: screening refuses an update, not what the node says of its service (a
        report that does not validate is a refusal of the report, not of the update)."""
        replies = [
            *(r.message for s in screened if s is not None for r in s.accepted),
            *(r.message for s in screened if s is not None for r in s.rejected if r.message),
        ]
        collected = collect(replies, pseudonym=self._pseudonym)
        refused = [
            ClientRefusal(pseudonym=p, phase="serving", reason=why) for p, why in collected.refused
        ]
        return replace(outcome, serving=collected.reports, refusals=[*outcome.refusals, *refused])


__all__ = ["RoundReport"]
