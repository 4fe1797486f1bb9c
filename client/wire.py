"""Federator's wire contract: every name a coordinator and a node exchange, declared once.

Flower carries our messages; what is *in* them is ours: the record keys of each message, the
actions (message types beyond Flower's ``train`` / ``evaluate``), the error codes a reply may
carry, the metric names a node reports, the statuses of a release delivery and the keys of a
node's own config. Both sides — `federator.client` on the node, `federator.server` and
`federator.strategies` on the coordinator, `federator.privacy`'s SecAgg+ pieces on both —
import them from here, so the two ends cannot drift apart. Nothing here imports anything.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

# -- every message --------------------------------------------------------------------------
# The coordinator's instructions: one JSON document in the message's ConfigRecord "config".
INSTRUCTIONS_KEY = "federator"
# A reply's MetricRecord: how many examples the node trained or evaluated on (Flower's name).
NUM_EXAMPLES = "num-examples"

# -- the run config (every node's Context.run_config) -----------------------------------------
# A user's own task travels as a signed bundle (`federator.client.bundle`): the zip archive and
# its DSSE envelope, each base64 text, declared in the Flower App's pyproject.
TASK_BUNDLE_KEY = "federator-task-bundle"
TASK_ENVELOPE_KEY = "federator-task-envelope"

# -- hello (query): who a node is -----------------------------------------------------------
# The coordinator's hello is the ConfigRecord "config" holding {HELLO_KEY: 1, CHALLENGE_KEY:
# 32 random bytes}; a deployed node signs the challenge (`federator.client.identity`).
HELLO_KEY = "hello"
CHALLENGE_KEY = "challenge"
META_KEY = "federator"  # the ConfigRecord of a node's hello reply
LABEL_KEY = "label"  # the node's label (its configured name, or its simulation partition)
VERSION_KEY = "federator-version"  # the node's Federator version
INSTALLED_KEY = "installed-version"  # the registry version of the model it has installed
PROOF_KEY = "identity-proof"  # its signature over the challenge, made with its node key
# A train or evaluate reply's META may carry its model service's report: JSON text of a
# `ServingReport` (`federator.client.serving.report`, the declaration both sides validate with).
MONITOR_KEY = "serving-report"

# -- releases (query.release) ---------------------------------------------------------------
# A release is the DSSE envelope and one bytes entry per file ("file:<name>") in the
# ConfigRecord under RELEASE_KEY; the reply carries "status" (a `DeliveryStatus`) and "reason".
RELEASE_ACTION = "release"
RELEASE_KEY = "release"
FILE_PREFIX = "file:"

# -- SecAgg+ (train.secagg) -----------------------------------------------------------------
SECAGG_ACTION = "secagg"
SECAGG_KEYS_KEY = "secagg-keys"  # the global model's array names, newline-separated
SECAGG_CLIPPING_KEY = "secagg-clipping-range"
SECAGG_MAX_WEIGHT_KEY = "secagg-max-weight"


class ReplyCode(IntEnum):
    """Error codes in a reply's ``Error`` that Federator sets (Flower's own are 0–8)."""

    REFUSED = 100  # the node refused the instructions on purpose; the reason says why
    UNREADABLE = 101  # the coordinator could not unpack the reply


class MetricName(StrEnum):
    """Metrics a node reports beside the task's own (``accuracy``, ``loss``, …)."""

    DP_EPSILON = "dp-epsilon"  # local DP: the ε this node's ledger charged for the run so far


class DeliveryStatus(StrEnum):
    """What became of a release sent to one node."""

    INSTALLED = "installed"
    REFUSED = "refused"  # the node's verification or policy said no; the reason says why
    UNREACHABLE = "unreachable"  # no reply, or an error instead of one


class NodeConfigKey(StrEnum):
    """The keys of a node's Flower node config that Federator reads."""

    NAME = "name"  # a deployed node's label
    IDENTITY_KEY = "identity-key"  # its kit's node.key, which signs the hello challenge
    PARTITION_ID = "partition-id"  # a simulated node's partition (Flower's name)
    NUM_PARTITIONS = "num-partitions"  # how many simulated nodes there are (Flower's name)
    DATA = "data"  # a deployed node's own data file
    POLICY = "policy"  # a deployed node's policy file
    STORE = "store"  # the folder of its installed, verified models
    PINNED_KEY = "pinned-key"  # the release public key it pinned
    MODEL = "model"  # the registered model whose releases it installs
    KEEP = "keep"  # how many installed versions it keeps
    PRIVACY_LEDGER = "privacy-ledger"  # its local-DP ledger file
    MAX_EPSILON = "max-epsilon"  # its own privacy budget (without a policy file)
    PRIVACY_DELTA = "privacy-delta"
    PRIVACY_ACCOUNTANT = "privacy-accountant"
    DP_NOISE_SEED = "dp-noise-seed"  # tests only: reproducible DP noise
