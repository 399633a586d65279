"""A folder of images per class, resized to the model's input size."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fragility.datasets.base import ImageSet, seeded_subset
from fragility.errors import DataError, first_line


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

        if self.root.is_file() and self.root.suffix.lower() == ".npz":
            raise DataError(
                f"dataset.root {self.root} is an .npz file, not a folder (arrays x and y: dataset=npz dataset.path={self.root})"
            )
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"dataset.root {self.root} is a file, not a folder of class folders")
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        c, h, w = input_size if input_size else (3, 224, 224)
        tf = [v2.PILToTensor(), v2.Resize((h, w), antialias=True)]
        if c == 1:
            tf.insert(0, v2.Grayscale(1))
        try:
            ds = TVImageFolder(str(self.root), transform=v2.Compose(tf), loader=load_rgb)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"cannot read image folder {self.root}: {e}") from None
        _count_each_file_once(ds, self.root)
        idx = seeded_subset(len(ds), n_samples, seed)
        xs = torch.stack([_read(ds, int(i)) for i in idx])
        ys = np.array([ds.targets[int(i)] for i in idx], dtype=np.int64)
        names = self.class_names or list(ds.classes)
        return ImageSet(xs.to(torch.uint8), torch.from_numpy(ys), torch.from_numpy(idx.astype(np.int64)), names, self.name)


def load_rgb(path: str):
    """The image at ``path`` as 8-bit RGB (PIL). torchvision's default loader calls ``convert("RGB")``,
    which clips 16-bit and float images at 255 instead of scaling them: a 16-bit PNG comes out
    almost all white. Here 16-bit integers are scaled by 255/65535, and float images by 255 (values
    in [0, 1]) or left as they are (values up to 255); other modes convert as torchvision would."""
    from PIL import Image

    with open(path, "rb") as f:
        im = Image.open(f)
        im.load()
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"cannot read image {path}: it holds NaN or infinite values")
        top = float(a.max(initial=0.0))
        if im.mode == "F" and a.min(initial=0.0) >= 0 and top <= 1.0:
            a = a * 255.0
        elif im.mode.startswith("I;16") or (im.mode == "I" and top > 255):  # 16-bit samples (PNG: I;16, or I)
            a = a * (255.0 / 65535.0)
        if a.min(initial=0.0) < 0 or a.max(initial=0.0) > 255.5:
            raise DataError(
                f"cannot read image {path}: mode {im.mode} values in [{a.min():g}, {a.max():g}] are not pixel intensities"
            )
        im = Image.fromarray(np.round(a).clip(0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


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
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for bad files: OSError, SyntaxError, ValueError, DecompressionBombError
        raise DataError(f"cannot read image {ds.samples[i][0]}: {type(e).__name__}: {first_line(e)}") from None
