"""The plan's ``[attack]``: the section checked against the rest of the config, then resolved.

The section itself and what it means live in `federator.simulations.attacks`; this module only
connects it to the plan: the number of clients and of clients sampled per round (which
Baruch et al.'s default z depends on), the federation seed the attackers are drawn from, and
what other sections rule an attack out.
"""

from __future__ import annotations

from federator.server.plan.config import FederationConfig
from federator.simulations.attacks.settings import Attack, resolve_attack
from federator.simulations.attacks.settings import attack_problems as section_problems


def attack_problems(cfg: FederationConfig, *, train_nodes: int) -> list[str]:
    """What is wrong with ``cfg``'s ``[attack]`` (nothing, without one)."""
    section = cfg.attack
    if section is None:
        return []
    problems = section_problems(section, clients=cfg.data.clients, train_nodes=train_nodes)
    if cfg.privacy.secagg is not None and section.kind.poisons_updates:
        problems.append(
            f"attack.kind: {section.kind.value!r} poisons updates at the coordinator, which "
            "under [privacy.secagg] sees only their sum (label-flip works with SecAgg+)"
        )
    return problems


def attack_plan(cfg: FederationConfig, *, train_nodes: int) -> Attack | None:
    """``cfg``'s attack resolved (who attacks, every parameter), or None."""
    if cfg.attack is None:
        return None
    return resolve_attack(
        cfg.attack,
        clients=cfg.data.clients,
        train_nodes=train_nodes,
        federation_seed=cfg.federation.seed,
    )


def resolved_attack(cfg: FederationConfig, attack: Attack) -> dict[str, object]:
    """The ``[attack]`` of the resolved config (MLflow's params): the keys given, with the
    kind's parameter and the seed filled in as the attack uses them."""
    assert cfg.attack is not None
    given = cfg.attack.model_dump(mode="json", exclude_none=True)
    return {**given, **attack.params(), "seed": attack.seed}


__all__ = ["attack_plan", "attack_problems", "resolved_attack"]
