"""The coordinator side: config and plan, the round loop, the gate, MLflow tracking, the CLI,
and deployment kits (`provision`, `load_node_kit`, `load_coordinator_kit`)."""

from federator.client.kit import KitKind, NodeKit, load_node_kit
from federator.server.deploy.kits import CoordinatorKit, NodeKey, load_coordinator_kit
from federator.server.deploy.provision import (
    FederationSpec,
    PartyKit,
    ProvisionReport,
    parse_federation,
    provision,
    read_federation_file,
)
from federator.server.federation.app import build_server_app
from federator.server.federation.gate import Gate, GatePolicy
from federator.server.federation.runner import run_federation
from federator.server.plan import FederationPlan, build_plan, load_plan
from federator.server.tracking import MlflowTracking

__all__ = [
    "CoordinatorKit",
    "FederationPlan",
    "FederationSpec",
    "Gate",
    "GatePolicy",
    "KitKind",
    "MlflowTracking",
    "NodeKey",
    "NodeKit",
    "PartyKit",
    "ProvisionReport",
    "build_plan",
    "build_server_app",
    "load_coordinator_kit",
    "load_node_kit",
    "load_plan",
    "parse_federation",
    "provision",
    "read_federation_file",
    "run_federation",
]
