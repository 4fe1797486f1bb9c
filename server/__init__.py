"""The coordinator side: config and plan, the round loop, the gate, MLflow tracking, the CLI."""

from federator.server.app import build_server_app
from federator.server.gate import Gate, GatePolicy
from federator.server.plan import FederationPlan, build_plan, load_plan
from federator.server.runner import run_federation
from federator.server.tracking import MlflowTracking

__all__ = [
    "FederationPlan",
    "Gate",
    "GatePolicy",
    "MlflowTracking",
    "build_plan",
    "build_server_app",
    "load_plan",
    "run_federation",
]
