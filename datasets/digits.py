"""scikit-learn's bundled 8x8 handwritten digits: the embedded dataset that needs no download.

One fixed, seeded split: the digits CNN trains on ``train`` and every benchmark scores ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from fragility.datasets.base import ImageSet, from_arrays, seeded_subset
from fragility.errors import DataError

DIGITS_CLASSES = [str(i) for i in range(10)]
_SPLIT_SEED = 1234
_TEST_FRACTION = 0.3


@lru_cache(maxsize=1)
def _all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return x, d.target.astype(np.int64)


def digits_arrays(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8) float32 in [0, 1] and labels (N,) for ``split`` in {train, test, all}."""
    x, y = _all()
    if split == "all":
        return x, y
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    n_test = round(_TEST_FRACTION * len(y))
    idx = {"test": perm[:n_test], "train": perm[n_test:]}.get(split)
    if idx is None:
        raise ValueError(f"unknown digits split {split!r} (train, test, all)")
    idx = np.sort(idx)
    return x[idx], y[idx]


class Digits:
    """scikit-learn's bundled 8x8 digits (no download): the embedded default."""

    def __init__(self, split: str = "test") -> None:
        if split not in ("train", "test", "all"):
            raise DataError(f"unknown digits split {split!r} (train, test, all)")
        self.split = split

    def train_split(self, path: str | None = None) -> Digits:
        """The split the digits CNN trained on (``path`` does not apply)."""
        return Digits("train")

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        x, y = digits_arrays(self.split)
        return from_arrays(x, y, seeded_subset(len(y), n_samples, seed), DIGITS_CLASSES, f"digits-{self.split}", False)
