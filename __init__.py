"""Federator: a federated-learning coordinator with MLOps hooks.

A federation config drives Flower rounds; every aggregated global model becomes an MLflow
model version with its lineage; a validation gate decides which version is the ``champion``.

This module is the package's front door. It holds the version and the one exception tree
every part of Federator raises from, so callers can catch ``FederatorError`` and know the
message is meant for a person::

    FederatorError
    ├── ConfigError            a federation config (or CLI override) is invalid
    ├── DataError              data is missing, malformed or does not fit the task
    ├── TaskError              a task cannot be loaded or breaks the task protocol
    ├── RegistryError          unknown or duplicate name in a registry
    ├── TrackingError          MLflow cannot be reached or refused a write
    ├── CheckpointError        a checkpoint is unreadable or does not fit this federation
    ├── DeploymentError        a SuperLink/SuperNode did not start or was refused
    ├── UpdateRejected         a client's update failed screening (the round goes on)
    ├── AggregationFailed      the accepted replies cannot be aggregated (the round is skipped)
    ├── FederationFailed       a federation stopped before its last round
    │   └── FederationInterrupted  ... because someone asked it to (Ctrl-C)
    ├── PolicyRefused          a node's own policy forbids what the coordinator asks
    │   ├── PrivacyBudgetExhausted  ... because it would spend more privacy than allowed
    │   └── TaskBundleRefused  ... a task bundle: unsigned, altered, not allowed, too big
    ├── ReleaseRefused         a node refuses a release (wrong model, replay, ...)
    │   └── SignatureInvalid   ... because its signature or digests do not verify
    ├── RequestRejected        a request to a node's model service is malformed or too big
    └── PredictionFailed       a served model's output is unusable (not finite)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "AggregationFailed",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeploymentError",
    "FederationFailed",
    "FederationInterrupted",
    "FederatorError",
    "PolicyRefused",
    "PredictionFailed",
    "PrivacyBudgetExhausted",
    "RegistryError",
    "ReleaseRefused",
    "RequestRejected",
    "SignatureInvalid",
    "TaskBundleRefused",
    "TaskError",
    "TrackingError",
    "UpdateRejected",
    "__version__",
]


class FederatorError(Exception):
    """Base of every error Federator raises on purpose; its message is meant for a person."""


class ConfigError(FederatorError):
    """A federation config or override is invalid. Nothing has been started."""


class DataError(FederatorError):
    """Data is missing, malformed, or does not fit the task."""


class TaskError(FederatorError):
    """A task cannot be imported, or it does not follow the task protocol."""


class RegistryError(FederatorError):
    """A registry lookup failed (unknown name) or a registration clashed (duplicate name)."""


class TrackingError(FederatorError):
    """The MLflow tracking server or store cannot be reached, or refused a write."""


class CheckpointError(FederatorError):
    """A checkpoint cannot be read (incomplete, an older format) or does not fit this
    federation (a part missing or unknown); nothing has been resumed."""


class DeploymentError(FederatorError):
    """A deployment process (SuperLink, SuperNode, a submitted run) did not start, stopped, or
    was refused (unregistered key, TLS mismatch)."""


class UpdateRejected(FederatorError):
    """A client's update failed screening; it is left out and the round goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AggregationFailed(FederatorError):
    """The replies cannot be aggregated: none at all, arrays that do not fit together (keys,
    shapes, dtypes), or weights that sum to zero. The round is skipped with this reason."""


class FederationFailed(FederatorError):
    """A federation stopped before its last round (for instance, too few clients replied)."""


class FederationInterrupted(FederationFailed):
    """A federation was stopped on request; completed rounds stay recorded."""


class PolicyRefused(FederatorError):
    """A node refuses what the coordinator asks because its own policy forbids it."""


class PrivacyBudgetExhausted(PolicyRefused):
    """A client's next round would exceed the privacy budget its own policy allows
    (or the epsilon the federation planned for); the node does not train."""


class TaskBundleRefused(PolicyRefused):
    """A node (or the coordinator) refuses a task bundle: unsigned, altered in transit, not
    allowed by the node's policy, bigger than its limit, or needing a package it lacks.
    Nothing of the bundle is imported."""


class ReleaseRefused(FederatorError):
    """A node refuses a release (another model, an older version); nothing is installed."""


class SignatureInvalid(ReleaseRefused):
    """A release's signature or file digests do not verify; nothing is installed."""


class RequestRejected(FederatorError):
    """A request to a node's model service (``federator node serve``) is malformed, too big,
    unauthorised, or does not fit the model; ``status`` is the HTTP status it is answered with.
    The service keeps serving."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class PredictionFailed(FederatorError):
    """A served version's model answered with something that is not a prediction (NaN or
    infinite outputs, as a release with diverged weights gives). The request is answered by
    the stable version if there is one, and the roll-out falls back from this version."""
