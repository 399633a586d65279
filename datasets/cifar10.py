"""torchvision's CIFAR-10 (the download code stays; tests read local files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fragility.datasets.base import ImageSet, from_arrays, seeded_subset
from fragility.errors import DataError


class Cifar10:
    """torchvision's CIFAR-10 (downloads with ``download=true``; tests use a local copy)."""

    def __init__(self, root: str = "~/.cache/fragility/cifar10", train: bool = False, download: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.train, self.download = bool(train), bool(download)

    def train_split(self, path: str | None = None) -> Cifar10:
        """The 50,000 training images (under ``path`` when given)."""
        return Cifar10(root=path or str(self.root), train=True, download=self.download)

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(self.root), train=self.train, download=self.download)
        except RuntimeError as e:
            raise DataError(f"CIFAR-10 not found under {self.root} ({e}); set dataset.download=true or dataset.root") from None
        x, y = np.asarray(ds.data), np.asarray(ds.targets)
        split = "train" if self.train else "test"
        return from_arrays(x, y, seeded_subset(len(y), n_samples, seed), ds.classes, f"cifar10-{split}", True)
