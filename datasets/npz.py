"""Any NumPy archive of images and labels, read without pickles."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fragility.datasets.base import ImageSet, check_images, check_labels, from_arrays, seeded_subset
from fragility.errors import DataError, FragilityError, first_line

# what numpy and zipfile raise for a truncated, corrupt or non-npz file, or an array kept as a pickle
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


@contextmanager
def open_npz(path: str | Path) -> Iterator[np.lib.npyio.NpzFile]:
    """``np.load(path, allow_pickle=False)`` of an npz archive: a file that is truncated, corrupt,
    a single ``.npy`` array or holds pickled objects is one :class:`DataError` naming it, also when
    the damage only shows as an array is read (``f["x"]``) inside the block."""
    try:
        f = np.load(path, allow_pickle=False)
    except _UNREADABLE as e:
        raise DataError(f"cannot read {path}: {first_line(e) or type(e).__name__}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds one array (.npy), not an npz archive: save one with np.savez(path, x=images, y=labels)")
    with f:
        try:
            yield f
        except FragilityError:
            raise
        except _UNREADABLE as e:
            raise DataError(f"cannot read {path}: {first_line(e) or type(e).__name__}") from None


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
        self.given_name = name
        self.name = name or self.path.stem
        self.x_key, self.y_key, self.layout = x_key, y_key, layout.lower()

    def train_split(self, path: str | None = None) -> Npz | None:
        """The same kind of archive at ``path`` (e.g. train.npz); None without one."""
        if not path:
            return None
        return Npz(
            path, class_names=self.class_names, name=self.given_name, x_key=self.x_key, y_key=self.y_key, layout=self.layout
        )

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        if self.path.is_dir():
            raise DataError(
                f"dataset.path {self.path} is a folder, not an .npz file (images in class folders: "
                f"dataset=imagefolder dataset.root={self.path})"
            )
        if not self.path.is_file():
            raise DataError(f"dataset file not found: {self.path}")
        with open_npz(self.path) as f:
            if self.x_key not in f or self.y_key not in f:
                raise DataError(f"{self.path} needs arrays {self.x_key!r} and {self.y_key!r}, has {list(f.keys())}")
            x, y = f[self.x_key], f[self.y_key]
        if self.layout not in ("nhwc", "nchw"):
            raise DataError(f"dataset.layout must be nhwc or nchw, got {self.layout!r}")
        x = check_images(x, str(self.path))
        if x.ndim == 3:  # greyscale without a channel axis
            x = x[..., None] if self.layout == "nhwc" else x[:, None]
        if x.ndim != 4:
            raise DataError(f"{self.path}: x must be (N, H, W, C) images, got shape {x.shape}")
        channels, other = (x.shape[-1], x.shape[1]) if self.layout == "nhwc" else (x.shape[1], x.shape[-1])
        if channels > 4 and other in (1, 3, 4):  # 32 "channels" beside a side of 3: the other layout
            want = "nchw" if self.layout == "nhwc" else "nhwc"
            raise DataError(
                f"{self.path}: x of shape {x.shape} looks {want.upper()}, not {self.layout.upper()}: set dataset.layout={want}"
            )
        y = check_labels(y, len(x), str(self.path))
        names = self.class_names or [str(i) for i in range(int(np.max(y)) + 1)]
        if int(np.max(y)) >= len(names):
            raise DataError(f"{self.path}: label {int(np.max(y))} is outside the {len(names)} classes in dataset.class_names")
        return from_arrays(x, y, seeded_subset(len(y), n_samples, seed), names, self.name, self.layout == "nhwc")
