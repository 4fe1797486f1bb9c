"""Privacy: local DP-SGD with a ledger each node enforces, central DP, SecAgg+, and an audit.

* `accounting`: ε of a history of DP-SGD steps (RDP or PRV accountants, from a registry).
* `ledger`: the node's on-disk record of every DP-SGD round, per dataset, across federations.
* `policy`: the coordinator's target (`LocalDpTarget`) and the node's limit
  (`NodePrivacyPolicy`); `authorize` checks both and records the spend before training.
* `dpsgd`: Opacus wiring with the checks that keep its accounting true.
* `central`: Flower's central-DP wrappers built from a federation config.
* `secagg`: SecAgg+ secure aggregation (Flower's legacy workflow, the only legacy-API user).
* `audit`: an empirical lower bound on ε (Clopper–Pearson) to test the claims above.
"""

from federator.privacy.accounting import ACCOUNTANTS, Accountant, Charge, epsilon, noise_multiplier
from federator.privacy.audit import (
    AuditResult,
    CanaryAudit,
    audit,
    canary_scores,
    clopper_pearson,
    epsilon_lower_bound,
)
from federator.privacy.central import (
    CentralClipping,
    CentralDp,
    CentralDpSettings,
    ClippingSide,
    central_dp,
)
from federator.privacy.dpsgd import DpSgd, check_loader, check_model, make_private
from federator.privacy.ledger import LedgerEntry, PrivacyLedger, dataset_fingerprint
from federator.privacy.policy import (
    LocalDpTarget,
    NodePrivacyPolicy,
    Spend,
    authorize,
    refuse_non_private,
)
from federator.privacy.secagg import (
    SecAggParams,
    SecAggResult,
    run_secagg_round,
)

__all__ = [
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
]
