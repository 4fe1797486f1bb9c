"""Attacks for research: a minority of simulated clients turned Byzantine (``[attack]``).

`settings` declares the config section and resolves it (who attacks, with what parameters);
`poison` holds the model-poisoning maps of the literature; `adversary` applies them to the
attackers' training replies at the coordinator, before screening and aggregation; `labels`
poisons the attacker nodes' training data instead (label flipping). Simulation only.
"""

from federator.simulations.attacks.labels import LabelFlip, flip_labels
from federator.simulations.attacks.settings import (
    Attack,
    AttackKind,
    AttackSection,
    alie_z,
    attack_problems,
    attacker_count,
    choose_attackers,
    resolve_attack,
)

__all__ = [
    "Attack",
    "AttackKind",
    "AttackSection",
    "LabelFlip",
    "alie_z",
    "attack_problems",
    "attacker_count",
    "choose_attackers",
    "flip_labels",
    "resolve_attack",
]
