"""Escalation: when a gradient-masking check fires, run the attack that answers it.

Warning is not enough: a leaderboard that prints "masked gradients?" next to 75% still reports
75%. Here the runner also scores the run's images with a stronger attack, written as its own
record (``variant="escalated"``, its own config hash), and reports the worse of the two
(:mod:`fragility.benchmarks.checks` for the flags; the flags stay on the original row).

Which attack answers which flag (:func:`plan`, on the run's attack config):

=====================================  ===============================================================
flag                                   escalated attack
=====================================  ===============================================================
``zero_grad``, ``nonfinite_grad``,     Square (score-based, no gradients; Andriushchenko et al. 2020)
``unbounded``, ``blackbox``            at the same norm, eps and target, ``square_queries`` queries
``saturated``                          the same attack with ``loss=margin`` (logit margin: its
                                       gradient does not vanish when the softmax saturates); Square
                                       when the attack has no ``loss`` option
``random``                             the same attack through EOT (:func:`eot_model`): every
                                       gradient is the one of ``log mean_k softmax`` over
                                       ``eot_samples`` draws, each draw counted as a query
``label_only``                         a decision-based attack (reads only the predicted class) at the
                                       same eps: RayS (hard-label ray search, Chen & Gu 2020),
                                       ``rays_queries`` queries, for an untargeted Linf attack;
                                       HopSkipJump (Chen et al. 2020), ``hsj_queries`` queries, for an
                                       L2 budget or a target class
=====================================  ===============================================================

Flags combine: ``random`` + ``saturated`` gives the margin loss through EOT; RayS or HopSkipJump
wins over the others (no gradient and no score can be followed on such a model), then Square wins over the
others (it needs no gradient, so EOT is not applied to it: each of its queries is one draw of the
randomized model, as deployed). An ``adaptive`` run (BPDA / EOT of a defense) already answers
``random`` and ``zero_grad`` coming from that defense; the runner passes those as ``answered``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from fragility.benchmarks.checks import Flag
from fragility.defenses.base import Defense

SQUARE_TARGET = "fragility.attacks.square.Square"
RAYS_TARGET = "fragility.attacks.rays.RayS"
HSJ_TARGET = "fragility.attacks.hsj.HopSkipJump"
DECISION_BASED = (RAYS_TARGET, HSJ_TARGET)
GRADIENT_FREE = ("zero_grad", "nonfinite_grad", "label_only", "unbounded", "blackbox")


@dataclass(frozen=True)
class EscalationSettings:
    square_queries: int = 1000
    rays_queries: int = 1000
    hsj_queries: int = 2000
    eot_samples: int = 8
    loss: str = "margin"

    @classmethod
    def from_config(cls, node: Any) -> EscalationSettings:
        if not node:
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(node).items() if k in names})


@dataclass(frozen=True)
class Plan:
    """The escalated attack as a config node, whether it runs through EOT, and the flags it answers."""

    attack: DictConfig
    eot_samples: int
    answers: tuple[str, ...]

    def describe(self) -> str:
        target = str(self.attack.get("_target_", "")).rsplit(".", 1)[-1]
        parts = [target]
        if self.attack.get("loss") and target != "Square":
            parts.append(f"loss={self.attack.loss}")
        if self.eot_samples > 1:
            parts.append(f"EOT-{self.eot_samples}")
        return " ".join(parts) + f" (answers {', '.join(self.answers)})"


def attack_with(node: DictConfig, **overrides: Any) -> DictConfig:
    """``node`` with ``overrides`` applied to the keys it has (``eps`` always); others are dropped."""
    base = OmegaConf.to_container(node, resolve=True)
    keep = {k: v for k, v in overrides.items() if k in base or k == "eps"}
    return OmegaConf.create({**base, **keep})


def _at_threat(target: str, node: DictConfig, queries: int) -> DictConfig:
    """The query attack ``target`` at the threat model (norm, eps), target and seed of ``node``."""
    base = OmegaConf.to_container(node, resolve=True)
    out = {"_target_": target, "eps": base.get("eps"), "norm": base.get("norm", "linf"), "queries": int(queries)}
    for k in ("target", "seed"):
        if k in base:
            out[k] = base[k]
    return OmegaConf.create(out)


def square_node(node: DictConfig, queries: int) -> DictConfig:
    """Square at the threat model (norm, eps), target and seed of the attack ``node``."""
    return _at_threat(SQUARE_TARGET, node, queries)


def rays_node(node: DictConfig, queries: int) -> DictConfig | None:
    """RayS at the eps and seed of the attack ``node``, or None where it does not apply (RayS is
    untargeted and Linf; FAB-T's ``targeted`` only orders its targets, its success is untargeted)."""
    base = OmegaConf.to_container(node, resolve=True)
    if str(base.get("norm", "linf")).lower() != "linf" or base.get("target") is not None:
        return None
    out = {"_target_": RAYS_TARGET, "eps": base.get("eps"), "norm": "linf", "queries": int(queries)}
    if "seed" in base:
        out["seed"] = base["seed"]
    return OmegaConf.create(out)


def hsj_node(node: DictConfig, queries: int) -> DictConfig:
    """HopSkipJump at the norm, eps, target and seed of the attack ``node``."""
    return _at_threat(HSJ_TARGET, node, queries)


def plan(
    flags: list[Flag] | list[str],
    attack_node: DictConfig,
    settings: EscalationSettings = EscalationSettings(),
    answered: tuple[str, ...] | set[str] = (),
) -> Plan | None:
    """The escalated attack for ``flags`` (names or :class:`Flag`), or None when nothing is left
    to answer. Only Lp attacks (a ``norm`` of linf or l2 and an ``eps``) escalate."""
    names = [f.name if isinstance(f, Flag) else str(f) for f in flags]
    names = [n for n in names if n not in set(answered)]
    base = OmegaConf.to_container(attack_node, resolve=True)
    if not names or str(base.get("norm", "")).lower() not in ("linf", "l2") or "eps" not in base:
        return None
    if base.get("_target_") in DECISION_BASED:
        return None
    # a score-based attack's answer gets at least its queries (Square's 5000 by default)
    given = int(base.get("queries") or 0) if base.get("_target_") == SQUARE_TARGET else 0
    if "label_only" in names:
        node = rays_node(attack_node, max(settings.rays_queries, given))
        return Plan(node if node is not None else hsj_node(attack_node, max(settings.hsj_queries, given)), 1, tuple(names))
    if base.get("_target_") == SQUARE_TARGET:  # a score-based attack is answered only by a decision-based one
        return None
    if any(n in GRADIENT_FREE for n in names) or ("saturated" in names and "loss" not in base):
        return Plan(square_node(attack_node, settings.square_queries), 1, tuple(names))
    node = attack_with(attack_node, loss=settings.loss) if "saturated" in names else OmegaConf.create(base)
    eot = settings.eot_samples if "random" in names else 1
    return Plan(node, eot, tuple(names))


class _Draws(Defense):
    """No transform; declared randomized so that :class:`DefendedClassifier` averages the wrapped
    model's own randomness (noise inside the network) over ``eot_samples`` draws."""

    name = "eot"
    randomized = True


def eot_model(model: nn.Module, samples: int) -> nn.Module:
    """``model`` behind EOT over its own randomness: with gradients, ``log mean_k softmax`` of
    ``samples`` forward passes (each counted as a query); without, one pass, as deployed. Put it
    in adaptive mode (:func:`fragility.defenses.adaptive_mode`) for the EOT gradient."""
    return _Draws(eot_samples=samples).wrap(model)
