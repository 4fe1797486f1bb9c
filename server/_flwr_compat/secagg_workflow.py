"""Flower's SecAgg+ workflow, made to survive dropouts in its first two stages.

Subclasses flwr 1.42's legacy `SecAggPlusWorkflow` and edits its ``WorkflowState`` between
stages; ``tests/unit/test_flwr_compat_server.py`` runs it against the installed flwr. The
stock workflow is what `federator.privacy.secagg.run_secagg_round` uses by default.
"""

from __future__ import annotations

from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid


class DropoutTolerantSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's `SecAggPlusWorkflow` that survives dropouts in the first two stages.

    This is OUR patch, not upstream Flower. In stock 1.42 a node that drops during "setup" or
    "share keys" stays in ``sampled_node_ids``; "unmask" then reports it as dead to its
    neighbours, who hold no share of its key (it never sent them any) and fail, so the whole
    round aborts however many nodes remain. Such a node never sent a masked vector nor took
    part in anyone's pairwise masks, so it is forgotten after each of those stages, as the
    protocol of Bell et al. intends. Dropouts in the last two stages are handled by Flower.
    """

    @staticmethod
    def _forget_dropped(state: WorkflowState) -> None:
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {
            nid: nbrs & alive for nid, nbrs in state.nid_to_neighbours.items() if nid in alive
        }

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = bool(super().setup_stage(grid, context, state))
        if ok:
            self._forget_dropped(state)
        return ok

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = bool(super().share_keys_stage(grid, context, state))
        if ok:
            self._forget_dropped(state)
        return ok
