"""What the coordinator tells clients each round, and how clients validate it.

The server sends one JSON document under the ``federator`` key of the train/evaluate
ConfigRecord. To a client that document is untrusted input, so it is parsed here with a
strict pydantic schema before anything uses it.
"""

from __future__ import annotations

from typing import Annotated

from flwr.app import ConfigRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federator import UpdateRejected
from federator.client.tasks import Optimizer, TrainSettings
from federator.client.wire import INSTRUCTIONS_KEY
from federator.privacy.central import CentralClipping
from federator.privacy.policy import LocalDpTarget
from federator.simulations.partition import SimulationData

_Strict = ConfigDict(extra="forbid", frozen=True)


class TrainingInstructions(BaseModel):
    """Local training settings (the proximal term comes from FedProx's ``proximal-mu``)."""

    model_config = _Strict
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=1)]
    optimizer: Optimizer
    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    seed: int


class Instructions(BaseModel):
    """Everything a client needs for one round."""

    model_config = _Strict
    federation: str
    run: str = ""
    task: str
    # The sha256 of the task's signed bundle (`federator.client.bundle`), which reaches the node
    # in the run config; None: a built-in task (or one installed on the node by hand).
    task_bundle: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    strategy: str = ""
    secagg: bool = False
    data: SimulationData
    training: TrainingInstructions
    local_dp: LocalDpTarget | None = None
    # Central DP with client-side clipping: clip the update before it leaves the node.
    central_clipping: CentralClipping | None = None

    def settings(self, *, round_seed: int, proximal_mu: float) -> TrainSettings:
        settings = {**self.training.model_dump(), "seed": round_seed}
        return TrainSettings(**settings, proximal_mu=proximal_mu)

    def to_config(self) -> ConfigRecord:
        """The ConfigRecord entry the server sends."""
        return ConfigRecord({INSTRUCTIONS_KEY: self.model_dump_json()})


def read_instructions(config: ConfigRecord) -> Instructions:
    """Parse the instructions in a received ConfigRecord; `UpdateRejected` if malformed."""
    raw = config.get(INSTRUCTIONS_KEY)
    if not isinstance(raw, str):
        raise UpdateRejected(f"the message carries no {INSTRUCTIONS_KEY!r} instructions")
    try:
        return Instructions.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UpdateRejected(f"malformed instructions at {where}: {first['msg']}") from None
