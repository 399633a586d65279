"""Attacks: one file each, all under the final :class:`~fragility.attacks.base.Attack` call."""

from fragility.attacks.base import Attack, AttackResult
from fragility.attacks.fgsm import FGSM
from fragility.attacks.onepixel import OnePixel
from fragility.attacks.patch import Patch
from fragility.attacks.pgd import PGD
from fragility.attacks.square import Square

__all__ = ["FGSM", "PGD", "Attack", "AttackResult", "OnePixel", "Patch", "Square"]
