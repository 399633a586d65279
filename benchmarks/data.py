"""Datasets as seeded subsets of [0, 1] NCHW images.

Every source returns an :class:`ImageSet`: images (kept as uint8 when the source is 8-bit, and
converted per batch), int64 labels, the indices of the chosen images in the source (recorded
with every result) and class names. ``n_samples`` images are drawn by a seeded permutation,
because the usual files are sorted by class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fragility.errors import DataError


@dataclass
class ImageSet:
    x: torch.Tensor  # (N, C, H, W), uint8 in [0, 255] or float in [0, 1]
    y: torch.Tensor  # (N,) int64
    ids: torch.Tensor  # (N,) int64 index of each image in its source
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_size(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def images(self, sl: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Float images in [0, 1] for ``sl`` (a slice or an index tensor)."""
        x = self.x[sl]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def seeded_subset(total: int, n_samples: int | None, seed: int) -> np.ndarray:
    """Indices of ``n_samples`` of ``total`` items, a seeded random subset in random order."""
    if n_samples is None:
        n_samples = total
    n_samples = int(n_samples)
    if n_samples <= 0:
        raise DataError(f"n_samples must be positive, got {n_samples}")
    if n_samples > total:
        raise DataError(f"n_samples={n_samples} but the dataset has only {total} images")
    return np.random.default_rng(seed).permutation(total)[:n_samples]


def _finish(x: np.ndarray, y: np.ndarray, idx: np.ndarray, class_names, name: str, channels_last: bool) -> ImageSet:
    xs = x[idx]
    if channels_last:
        xs = np.ascontiguousarray(xs.transpose(0, 3, 1, 2))
    xt = torch.from_numpy(np.ascontiguousarray(xs))
    if xt.dtype != torch.uint8:
        xt = xt.float()
        if xt.numel() and (xt.min() < 0 or xt.max() > 1):
            raise DataError(f"{name}: float images must lie in [0, 1]")
    return ImageSet(xt, torch.from_numpy(np.asarray(y)[idx].astype(np.int64)), torch.from_numpy(idx.astype(np.int64)), list(class_names), name)


class Digits:
    """scikit-learn's bundled 8x8 digits (no download): the embedded default."""

    def __init__(self, split: str = "test") -> None:
        self.split = split

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        from fragility.benchmarks.digits import DIGITS_CLASSES, digits_arrays

        x, y = digits_arrays(self.split)
        return _finish(x, y, seeded_subset(len(y), n_samples, seed), DIGITS_CLASSES, f"digits-{self.split}", False)


class Npz:
    """A NumPy archive with images ``x`` (uint8 NHWC, or float in [0, 1]) and labels ``y``.

    Loaded with ``allow_pickle=False``. ``layout`` is ``nhwc`` (default) or ``nchw``.
    """

    def __init__(
        self,
        path: str,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        x_key: str = "x",
        y_key: str = "y",
        layout: str = "nhwc",
    ) -> None:
        if not path:
            raise DataError("dataset.path is required for an npz dataset")
        self.path = Path(path).expanduser()
        self.class_names = list(class_names) if class_names else None
        self.name = name or self.path.stem
        self.x_key, self.y_key, self.layout = x_key, y_key, layout.lower()

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        if not self.path.is_file():
            raise DataError(f"dataset file not found: {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as f:
                if self.x_key not in f or self.y_key not in f:
                    raise DataError(f"{self.path} needs arrays {self.x_key!r} and {self.y_key!r}, has {list(f.keys())}")
                x, y = f[self.x_key], f[self.y_key]
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {self.path}: {str(e).splitlines()[0][:200]}") from None
        if x.ndim == 3:  # greyscale without a channel axis
            x = x[..., None] if self.layout == "nhwc" else x[:, None]
        if x.ndim != 4 or len(x) != len(y):
            raise DataError(f"{self.path}: x must be (N, H, W, C) with one label per image, got x {x.shape}, y {y.shape}")
        names = self.class_names or [str(i) for i in range(int(np.max(y)) + 1)]
        return _finish(x, y, seeded_subset(len(y), n_samples, seed), names, self.name, self.layout == "nhwc")


class Cifar10:
    """torchvision's CIFAR-10 (downloads with ``download=true``; tests use a local copy)."""

    def __init__(self, root: str = "~/.cache/fragility/cifar10", train: bool = False, download: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.train, self.download = bool(train), bool(download)

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(self.root), train=self.train, download=self.download)
        except RuntimeError as e:
            raise DataError(f"CIFAR-10 not found under {self.root} ({e}); set dataset.download=true or dataset.root") from None
        x, y = np.asarray(ds.data), np.asarray(ds.targets)
        split = "train" if self.train else "test"
        return _finish(x, y, seeded_subset(len(y), n_samples, seed), ds.classes, f"cifar10-{split}", True)


class ImageFolder:
    """torchvision ImageFolder (``root/class_name/*.jpg``), resized to the model's input size."""

    def __init__(self, root: str, name: str | None = None, class_names: Sequence[str] | None = None) -> None:
        if not root:
            raise DataError("dataset.root is required for an image folder")
        self.root = Path(root).expanduser()
        self.name = name or self.root.name
        self.class_names = list(class_names) if class_names else None

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
        idx = seeded_subset(len(ds), n_samples, seed)
        xs = torch.stack([ds[int(i)][0] for i in idx])
        ys = np.array([ds.targets[int(i)] for i in idx], dtype=np.int64)
        names = self.class_names or list(ds.classes)
        return ImageSet(xs.to(torch.uint8), torch.from_numpy(ys), torch.from_numpy(idx.astype(np.int64)), names, self.name)
