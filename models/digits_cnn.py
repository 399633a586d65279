"""A small CNN for the embedded 8x8 digits, trained on first use and cached.

Training (40 epochs) takes about a minute on CPU: measured 64 s and 97 s wall (46 s and 64 s of
CPU time) with a fresh ``FRAGILITY_CACHE`` on 2 cores shared with other work (load average 4.5-5).

The cache lives under ``$FRAGILITY_CACHE`` (default ``~/.cache/fragility``); a missing or corrupt
cache file is retrained and rewritten atomically, so concurrent runs never see half a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fragility.datasets.digits import DIGITS_CLASSES, digits_arrays
from fragility.errors import CheckpointError
from fragility.models.checkpoint import identify, load_weights
from fragility.models.compile import maybe_compile
from fragility.models.wrapper import Classifier

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
DIGITS_MEAN = (0.31,)
DIGITS_STD = (0.38,)


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def cache_dir() -> Path:
    base = os.environ.get("FRAGILITY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fragility"
    )
    return Path(base)


def train_digits_cnn(epochs: int = 40, seed: int = 0) -> DigitsCNN:
    """Train on the fixed digits train split; deterministic for a given seed on CPU."""
    x, y = digits_arrays("train")
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsCNN()
    model = Classifier(net, mean=DIGITS_MEAN, std=DIGITS_STD, input_size=(1, 8, 8), class_names=DIGITS_CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(y) + 63) // 64))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return net


def build(checkpoint: str | None = None, retrain: bool = False, compile: bool = False, channels_last: bool = True) -> Classifier:
    """The digits CNN: from ``checkpoint`` if given, else from the cache (trained on first use);
    ``compile``: forward through torch.compile (models/compile.py)."""
    net = DigitsCNN()
    path = None
    if checkpoint:
        load_weights(net, checkpoint, normalization=(DIGITS_MEAN, DIGITS_STD))
    else:
        path = cache_dir() / f"digits_cnn-v{RECIPE_VERSION}.pt"
        loaded = False
        if path.is_file() and not retrain:
            try:
                load_weights(net, path)
                loaded = True
            except CheckpointError as e:
                log.warning("digits CNN cache unusable (%s); retraining", e)
        if not loaded:
            log.info("training the digits CNN (first use; cached at %s)", path)
            net = train_digits_cnn()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(net.state_dict(), tmp)
            os.replace(tmp, path)
    model = Classifier(net, mean=DIGITS_MEAN, std=DIGITS_STD, input_size=(1, 8, 8), class_names=DIGITS_CLASSES, name="digits_cnn")
    # weights from a user's file carry its hash in the name; the cached recipe model keeps its
    # plain name (the recipe identifies it) and still records the cache file's hash
    return maybe_compile(identify(model, checkpoint or path, rename=bool(checkpoint)), compile, channels_last)
