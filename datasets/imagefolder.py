"""A folder of images per class, resized to the model's input size."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fragility.datasets.base import ImageSet, seeded_subset
from fragility.errors import DataError


class ImageFolder:
    """torchvision ImageFolder (``root/class_name/*.jpg``), resized to the model's input size."""

    def __init__(self, root: str, name: str | None = None, class_names: Sequence[str] | None = None) -> None:
        if not root:
            raise DataError("dataset.root is required for an image folder")
        self.root = Path(root).expanduser()
        self.name = name or self.root.name
        self.class_names = list(class_names) if class_names else None

    def train_split(self, path: str | None = None) -> ImageFolder | None:
        """The same class layout under ``path``; None without one."""
        if not path:
            return None
        return ImageFolder(path, name=self.name, class_names=self.class_names)

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        from torchvision.datasets import ImageFolder as TVImageFolder
        from torchvision.transforms import v2

        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        c, h, w = input_size if input_size else (3, 224, 224)
        tf = [v2.PILToTensor(), v2.Resize((h, w), antialias=True)]
        if c == 1:
            tf.insert(0, v2.Grayscale(1))
        try:
            ds = TVImageFolder(str(self.root), transform=v2.Compose(tf))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"cannot read image folder {self.root}: {e}") from None
        _count_each_file_once(ds, self.root)
        idx = seeded_subset(len(ds), n_samples, seed)
        xs = torch.stack([_read(ds, int(i)) for i in idx])
        ys = np.array([ds.targets[int(i)] for i in idx], dtype=np.int64)
        names = self.class_names or list(ds.classes)
        return ImageSet(xs.to(torch.uint8), torch.from_numpy(ys), torch.from_numpy(idx.astype(np.int64)), names, self.name)


def _count_each_file_once(ds, root: Path) -> None:
    """torchvision walks the folder following symlinks, so a link back up the tree (``cat/loop ->
    ..``) lists every image again at each level, ~40 times: keep each real file once (in place)."""
    seen: set[str] = set()
    keep = []
    for path, target in ds.samples:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            keep.append((path, target))
    if len(keep) < len(ds.samples):
        warnings.warn(
            f"image folder {root}: {len(ds.samples) - len(keep)} paths lead to files already listed (symlinks); "
            f"each file counted once ({len(keep)} images)",
            RuntimeWarning,
            stacklevel=3,
        )
        ds.samples = ds.imgs = keep
        ds.targets = [t for _, t in keep]


def _read(ds, i: int) -> torch.Tensor:
    """Image ``i`` of a torchvision ImageFolder; a file that does not decode is a DataError naming it."""
    try:
        return ds[i][0]
    except Exception as e:  # PIL raises many types for bad files: OSError, SyntaxError, ValueError, DecompressionBombError
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise DataError(f"cannot read image {ds.samples[i][0]}: {type(e).__name__}: {first}") from None
