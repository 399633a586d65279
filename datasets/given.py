"""Images handed over as tensors (``fragility.benchmarks.evaluate``), found by their content.

``dataset=given dataset.key=<sha256>`` reads a batch registered in this process by
:func:`register`; the key is the SHA-256 of the images, labels and class names, so a run's stored
key holds the data it scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch

from fragility.datasets.base import ImageSet, check_images, check_labels, seeded_subset
from fragility.errors import ConfigError, DataError

_GIVEN: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}


def register(images, labels, class_names: Sequence[str]) -> str:
    """Keep ``images`` (N, C, H, W: float in [0, 1] or uint8) and ``labels`` (N class indices) for
    ``dataset=given`` and return their key; bad values are a one-line :class:`DataError`."""
    x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    x = check_images(x, "images")
    if x.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {x.shape}")
    y = check_labels(y, len(x), "labels")
    names = [str(c) for c in class_names]
    if int(y.max()) >= len(names):
        raise DataError(f"labels: label {int(y.max())} is outside the {len(names)} classes")
    xt = torch.from_numpy(np.ascontiguousarray(x))
    xt = xt if xt.dtype == torch.uint8 else xt.float()
    h = hashlib.sha256(json.dumps({"shape": list(xt.shape), "dtype": str(xt.dtype), "classes": names}).encode())
    h.update(xt.numpy().tobytes())
    h.update(y.astype(np.int64).tobytes())
    key = h.hexdigest()
    _GIVEN[key] = (xt, torch.from_numpy(y.astype(np.int64)), names)
    return key


class Given:
    """The images registered under ``key``; ``name`` labels them in the leaderboard."""

    def __init__(self, key: str, name: str = "given") -> None:
        self.key, self.name = str(key), str(name)

    def train_split(self, path: str | None = None) -> None:
        return None

    def load(self, n_samples: int | None, seed: int, input_size: Sequence[int] | None = None) -> ImageSet:
        if self.key not in _GIVEN:
            raise ConfigError(
                f"dataset=given: no images with key {self.key[:16]}... were handed to fragility.benchmarks.evaluate() "
                "in this process"
            )
        x, y, names = _GIVEN[self.key]
        idx = seeded_subset(len(y), n_samples, seed)
        ids = torch.from_numpy(idx.astype(np.int64))
        return ImageSet(x[ids], y[ids], ids, list(names), self.name)
