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

from fragility.datasets.base import ImageSet, from_arrays, seeded_subset
from fragility.errors import ConfigError, DataError

_GIVEN: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}


def register(images, labels, class_names: Sequence[str]) -> str:
    """Keep ``images`` (N, C, H, W: float in [0, 1] or uint8) and ``labels`` (N class indices) for
    ``dataset=given`` and return their key. Their values are checked where every source's are, as
    the run loads them (:func:`~fragility.datasets.base.from_arrays`: one-line :class:`DataError`)."""
    x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if x.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {x.shape}")
    x, y, names = np.ascontiguousarray(x), np.ascontiguousarray(y), [str(c) for c in class_names]
    h = hashlib.sha256(
        json.dumps({"x": [list(x.shape), str(x.dtype)], "y": [list(y.shape), str(y.dtype)], "classes": names}).encode()
    )
    h.update(x.tobytes())
    h.update(y.tobytes())
    key = h.hexdigest()
    _GIVEN[key] = (x, y, names)
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
        return from_arrays(x, y, seeded_subset(len(y), n_samples, seed), names, self.name, channels_last=False)
