"""The dataset contract: seeded subsets of [0, 1] NCHW images as an :class:`ImageSet`.

Every source returns an :class:`ImageSet`: images (kept as uint8 when the source is 8-bit, and
converted per batch), int64 labels, the indices of the chosen images in the source (recorded
with every result) and class names. ``n_samples`` images are drawn by a seeded permutation,
because the usual files are sorted by class.
"""

from __future__ import annotations

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
        raise DataError(f"n_samples={n_samples} but the dataset has only {total} images: set n_samples={total} (or fewer)")
    return np.random.default_rng(seed).permutation(total)[:n_samples]


def check_labels(y, n_images: int, where: str) -> np.ndarray:
    """Labels as int64: a non-empty 1-D integer array (or an (N, 1) column) with one label per image,
    else a one-line DataError naming ``where`` (float labels are taken only when they are whole
    numbers: never truncated, NaN never cast)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[0] == n_images and y.shape[1] > 1:
        raise DataError(f"{where}: labels must be 1-D class indices, got shape {y.shape} (one-hot? store y.argmax(1))")
    if y.ndim == 2 and y.shape[1] == 1:  # a column, one label per row (Keras' cifar10.load_data gives (N, 1))
        y = y[:, 0]
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)  # whole numbers stored as floats (3.0) convert exactly; 3.5 or NaN does not
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D (one per image), got shape {y.shape}")
    if len(y) != n_images:
        raise DataError(f"{where}: {len(y)} labels for {n_images} images")
    if len(y) == 0:
        raise DataError(f"{where}: no images")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return y.astype(np.int64, copy=False)


def check_images(x, where: str) -> np.ndarray:
    """Images as uint8 (0..255) or float in [0, 1], finite; anything else is a one-line DataError."""
    x = np.asarray(x)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    if x.size == 0:
        raise DataError(f"{where}: no images")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{where}: images contain NaN or Inf pixels ({int((~np.isfinite(x)).sum())} of {x.size})")
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{where}: float images must lie in [0, 1], got [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    return x


def from_arrays(x: np.ndarray, y: np.ndarray, idx: np.ndarray, class_names, name: str, channels_last: bool) -> ImageSet:
    """An ImageSet of the images ``idx`` of ``x`` (checked: dtype, finiteness, range; labels
    1-D integers inside ``class_names``)."""
    x = check_images(x, name)
    y = check_labels(y, len(x), name)
    if y.max() >= len(class_names):
        raise DataError(f"{name}: label {int(y.max())} is outside the {len(class_names)} classes")
    xs = x[idx]
    if channels_last:
        xs = np.ascontiguousarray(xs.transpose(0, 3, 1, 2))
    xt = torch.from_numpy(np.ascontiguousarray(xs))
    if xt.dtype != torch.uint8:
        xt = xt.float()
    return ImageSet(xt, torch.from_numpy(y[idx]), torch.from_numpy(idx.astype(np.int64)), list(class_names), name)


def _model_class(name: str, lookup: dict[str, int], n_classes: int) -> int | None:
    """The model's index for a dataset class: by name (case and ``_`` vs space ignored), or a
    folder named by its index (``"3"``); None when it is neither."""
    for key in (name.lower().replace("_", " "), name.lower()):
        if key in lookup:
            return lookup[key]
    return int(name) if name.isdigit() and int(name) < n_classes else None


def align_labels(data: ImageSet, class_names: list[str]) -> ImageSet:
    """Map a dataset's labels onto the model's classes when their names differ (e.g. an
    ImageFolder of a few ImageNet classes scored by a 1000-class model)."""
    if list(data.class_names) == list(class_names):
        return data
    lookup = {c.lower(): i for i, c in enumerate(class_names)}
    found = [_model_class(c, lookup, len(class_names)) for c in data.class_names]
    mapping = found if all(i is not None for i in found) else []
    if mapping:
        data.y = torch.tensor(mapping, dtype=torch.long)[data.y]
        data.class_names = list(class_names)
        return data
    unknown = [c for c, i in zip(data.class_names, found, strict=True) if i is None]
    if len(data.class_names) == len(class_names):
        # same number of classes under other names: trust the indices, unless a name the model knows
        # sits at another index (a folder renamed "plane" sorts elsewhere and shifts the others)
        moved = [(c, i, j) for j, (c, i) in enumerate(zip(data.class_names, found, strict=True)) if i is not None and i != j]
        if not moved:
            return data
        c, i, j = moved[0]
        raise DataError(
            f"dataset {data.name}: {', '.join(repr(u) for u in unknown[:3])}{', ...' if len(unknown) > 3 else ''} "
            f"{'is' if len(unknown) == 1 else 'are'} not a class of the model, and {c!r} is the model's class {i} but the "
            f"dataset's class {j}, so its indices cannot be trusted either; name every class as the model does "
            "(or set dataset.class_names)"
        )
    raise DataError(
        f"dataset {data.name} has {len(data.class_names)} classes that do not match the model's {len(class_names)}"
        f" (not a class of the model: {', '.join(repr(c) for c in unknown[:3])}{', ...' if len(unknown) > 3 else ''})"
    )


def source_label(source, data: ImageSet) -> str:
    """``cifar10-test`` for an npz or folder source named cifar10 read from test.npz; else the data's
    name (labels which file of a source a number came from)."""
    p = getattr(source, "path", None) or getattr(source, "root", None)
    stem = Path(p).stem if p else ""
    return f"{data.name}-{stem}" if stem and stem not in data.name else data.name
