"""Attacks: one file each, all under the final :class:`~fragility.attacks.base.Attack` call."""

from fragility.attacks.apgd import APGD
from fragility.attacks.apgd_t import APGDT
from fragility.attacks.autoattack import AutoAttack
from fragility.attacks.base import Attack, AttackResult
from fragility.attacks.fab import FAB
from fragility.attacks.fgsm import FGSM
from fragility.attacks.onepixel import OnePixel
from fragility.attacks.patch import Patch
from fragility.attacks.pgd import PGD
from fragility.attacks.square import Square

__all__ = ["APGD", "APGDT", "FAB", "FGSM", "PGD", "Attack", "AttackResult", "AutoAttack", "OnePixel", "Patch", "Square"]
