"""Datasets: each source returns a seeded subset as an :class:`ImageSet` of [0, 1] NCHW images."""

from fragility.datasets.base import ImageSet, align_labels, from_arrays, seeded_subset, source_label
from fragility.datasets.cifar10 import Cifar10
from fragility.datasets.digits import DIGITS_CLASSES, Digits, digits_arrays
from fragility.datasets.imagefolder import ImageFolder
from fragility.datasets.npz import Npz

__all__ = [
    "DIGITS_CLASSES",
    "Cifar10",
    "Digits",
    "ImageFolder",
    "ImageSet",
    "Npz",
    "align_labels",
    "digits_arrays",
    "from_arrays",
    "seeded_subset",
    "source_label",
]
