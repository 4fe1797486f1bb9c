"""The coordinator's side of Flower's internals, in quarantine — and the way to do without them.

Everything on the coordinator that imports a private Flower name or changes how a Flower
class behaves lives in this package (``tests/unit/test_architecture.py`` checks). Each piece
has a stock fallback: ``federator run --stock-flower`` (run config key
`federator.server.federation.run_config.STOCK_FLOWER_KEY`) uses Flower's own, untouched.

===================  ==========================================  ===============================
piece                Flower internals it drives                   stock Flower instead
===================  ==========================================  ===============================
`patient_pull`       a copy of ``HttpGrid.pull_messages`` using    a reply part still uploading
                     ``HttpGrid._runtime_client``, ``flwr.proto``  is asked for again after 1 s,
                     requests and ``Metadata``'s ``_message_id``   2 s, … (most deployed rounds
                                                                   pay ~1 s)
`secagg_workflow`    subclasses the legacy ``SecAggPlusWorkflow``  a node that drops in "setup" or
                     and edits its ``WorkflowState`` after the     "share keys" aborts the whole
                     setup and share-keys stages                   SecAgg+ round
`sim_dispatch`       swaps ``vce_api.add_messages_to_queue`` for   simulated messages reach the
                     the same loop with a 0.01 s wait, while a     workers every 0.1 s: each phase
                     simulation runs (``simulate --stock-flower``  of a simulated round waits up
                     keeps Flower's)                               to 0.1 s
===================  ==========================================  ===============================

Upgrading Flower: ``tests/unit/test_flwr_compat_server.py`` runs every piece against the
installed flwr's real classes (``HttpGrid`` over an HTTP transport that answers as a SuperLink
would, Flower's workflow on real messages); when it fails, fix the piece or run with
``--stock-flower`` until it is fixed. No upstream issue covers either behaviour yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from flwr.app import Message
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from federator.server._flwr_compat.patient_pull import deployed, pull_function
from federator.server._flwr_compat.secagg_workflow import DropoutTolerantSecAggPlusWorkflow
from federator.server._flwr_compat.sim_dispatch import quick_dispatch

Pull = Callable[[Iterable[str]], list[Message]]


@dataclass(frozen=True, kw_only=True)
class FlowerCompat:
    """Whether the coordinator uses its Flower patches (the default) or stock Flower."""

    stock: bool = False

    def pull(self, grid: Grid) -> Pull:
        """How to pull replies from ``grid``: our patient pull on a deployed SuperLink."""
        if self.stock:
            return lambda message_ids: list(grid.pull_messages(message_ids))
        return pull_function(grid)

    @property
    def secagg_workflow(self) -> type[SecAggPlusWorkflow]:
        """The SecAgg+ workflow class a round runs."""
        return SecAggPlusWorkflow if self.stock else DropoutTolerantSecAggPlusWorkflow

    def simulation_dispatch(self) -> AbstractContextManager[None]:
        """Around ``run_simulation``: how often the Simulation Engine dispatches messages."""
        return nullcontext() if self.stock else quick_dispatch()

    def describe(self) -> str:
        """One line for the run's log."""
        if self.stock:
            return "stock Flower (no patient pulls; SecAgg+ aborts on an early dropout)"
        return "Federator's Flower patches (patient pulls; SecAgg+ survives early dropouts)"


__all__ = ["FlowerCompat", "Pull", "deployed"]
