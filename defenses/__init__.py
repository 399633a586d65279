"""Defenses: wrappers that turn a classifier into a defended classifier (still [0, 1] NCHW).

``Defense.wrap(model) -> DefendedClassifier``; ``defended.adaptive = True`` switches the gradient
path to BPDA / EOT (see :mod:`fragility.defenses.base`).
"""

from fragility.defenses.base import DefendedClassifier, Defense, adaptive_mode, bpda, set_adaptive
from fragility.defenses.bit_depth import BitDepth
from fragility.defenses.checkpoint import Checkpoint
from fragility.defenses.gaussian_noise import GaussianNoise
from fragility.defenses.jpeg import JPEG
from fragility.defenses.median import Median
from fragility.defenses.smoothing import SmoothedClassifier, Smoothing

__all__ = [
    "JPEG",
    "BitDepth",
    "Checkpoint",
    "DefendedClassifier",
    "Defense",
    "GaussianNoise",
    "Median",
    "SmoothedClassifier",
    "Smoothing",
    "adaptive_mode",
    "bpda",
    "set_adaptive",
]
