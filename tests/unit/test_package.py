"""The package layout: one import name, tested public APIs, no bare top-level modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "federator": [
        "AggregationFailed",
        "CheckpointError",
        "ConfigError",
        "DataError",
        "DeploymentError",
        "FederationFailed",
        "FederationInterrupted",
        "FederatorError",
        "PolicyRefused",
        "PrivacyBudgetExhausted",
        "RegistryError",
        "ReleaseRefused",
        "PredictionFailed",
        "RequestRejected",
        "SignatureInvalid",
        "TaskBundleRefused",
        "TaskError",
        "TrackingError",
        "UpdateRejected",
        "__version__",
    ],
    "federator.strategies": [
        "STRATEGIES",
        "ArraySpec",
        "ClientReply",
        "Guarded",
        "NoParams",
        "Registry",
        "Rejection",
        "Sampling",
        "Screened",
        "StrategySpec",
        "StrategyState",
        "array_specs",
        "check_arrays",
        "screen_replies",
    ],
    "federator.client.tasks": [
        "DIGITS_MLP",
        "MNIST_CNN",
        "MNIST_SCATTER",
        "TASKS",
        "ClassificationTask",
        "Evaluation",
        "Optimizer",
        "Task",
        "TrainSettings",
        "resolve_task",
    ],
    "federator.server": [
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
    ],
    "federator.simulations": [
        "ArrayData",
        "DATASETS",
        "Partitioner",
        "SimulationData",
        "SimulationResources",
        "client_data",
        "load_dataset",
        "server_holdout",
        "simulate",
    ],
    "federator.privacy": [
        "ACCOUNTANTS",
        "Accountant",
        "AuditResult",
        "CanaryAudit",
        "CentralClipping",
        "CentralDp",
        "CentralDpSettings",
        "Charge",
        "ClippingSide",
        "DpSgd",
        "LedgerEntry",
        "LocalDpTarget",
        "NodePrivacyPolicy",
        "PrivacyLedger",
        "SecAggParams",
        "SecAggResult",
        "Spend",
        "audit",
        "authorize",
        "canary_scores",
        "central_dp",
        "check_loader",
        "check_model",
        "clopper_pearson",
        "dataset_fingerprint",
        "epsilon",
        "epsilon_lower_bound",
        "make_private",
        "noise_multiplier",
        "refuse_non_private",
        "run_secagg_round",
    ],
    "federator.client": [
        "Instructions",
        "build_client_app",
        "load_arrays",
        "model_arrays",
        "read_instructions",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_public_api(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_error_tree_has_one_root() -> None:
    import federator

    for name in PUBLIC["federator"]:
        obj = getattr(federator, name)
        if isinstance(obj, type) and name != "FederatorError":
            assert issubclass(obj, federator.FederatorError), name


@pytest.mark.parametrize("bare", ["server", "client", "strategies", "privacy", "simulations"])
def test_no_bare_top_level_module(bare: str, tmp_path: object) -> None:
    # Outside the checkout, only `federator.<bare>` exists.
    code = (
        f"import importlib.util, sys; assert importlib.util.find_spec({bare!r}) is None; "
        f"import federator.{bare}"
    )
    subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), check=True)
