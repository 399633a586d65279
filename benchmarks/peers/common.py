"""What every peer benchmark shares, built on the library (one loader, one predict, one metric).

Scripts here run as ``python benchmarks/peers/bench_<x>.py`` and need the ``peers`` extra
(torchattacks, adversarial-robustness-toolbox, foolbox); they are not part of the wheel.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fragility.benchmarks.metrics import outcome_metrics
from fragility.datasets import ImageSet, Npz
from fragility.models import eval_mode, predict
from fragility.models.cifar_resnet import CIFAR10_CLASSES, build

REPO = Path(__file__).resolve().parents[2]


def shared_dir(arg: str | None = None) -> Path:
    """``--shared``, else ``$FRAGILITY_SHARED``, else ``../shared`` beside the checkout; exits with one
    line when the CIFAR-10 files are not there."""
    p = Path(arg or os.environ.get("FRAGILITY_SHARED", REPO.parent / "shared")).expanduser().resolve()
    if not (p / "data" / "cifar10" / "test.npz").is_file():
        sys.exit(f"benchmark: shared CIFAR-10 files not found under {p} (pass --shared or set FRAGILITY_SHARED)")
    return p


def cifar_resnet(shared: Path, depth: int = 20, checkpoint: str | None = None) -> nn.Module:
    """A shared option-A CIFAR ResNet (``resnet{depth}-*.th``), or ``checkpoint`` for that depth."""
    if checkpoint is None:
        found = sorted((shared / "models" / "cifar10").glob(f"resnet{depth}-*.th"))
        if not found:
            sys.exit(f"benchmark: no resnet{depth}-*.th under {shared / 'models' / 'cifar10'}")
        checkpoint = str(found[0])
    return build(depth=depth, checkpoint=checkpoint).eval()


def cifar_test(shared: Path, n: int | None = None, seed: int = 0) -> ImageSet:
    """A seeded subset of the shared CIFAR-10 test set, through the library's own loader."""
    return Npz(str(shared / "data" / "cifar10" / "test.npz"), class_names=CIFAR10_CLASSES, name="cifar10").load(n, seed)


def correct_subset(
    model: nn.Module, data: ImageSet, n: int, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``data`` that ``model`` classifies correctly: images, labels, ids."""
    pred, _ = predict(model, data, batch_size)
    ok = (pred == data.y).nonzero().flatten()[:n]
    return data.images(ok).contiguous(), data.y[ok], data.ids[ok]


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor) -> dict[str, float]:
    """Judge a method's adversarial images the way the runner does: eval mode, fp32, an image is
    robust when it is classified correctly before and after (``outcome_metrics``)."""
    check_range(adv)
    clean, _ = predict(model, x)
    after, _ = predict(model, adv.detach().float())
    return outcome_metrics(y.cpu(), clean, after)


def pick_device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` (or ``cuda:N``); exits with one line when CUDA is asked for
    and absent."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"benchmark: --device {name} but torch {torch.__version__} sees no CUDA device")
    return dev


def device_name(dev: torch.device) -> str:
    """The card (or ``cpu``) for the report."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def check_range(adv: torch.Tensor) -> None:
    if adv.numel() and (adv.min() < 0 or adv.max() > 1 or not torch.isfinite(adv).all()):
        raise SystemExit(f"an attack left [0, 1]: range [{float(adv.min())}, {float(adv.max())}]")


class Counting(nn.Module):
    """Counts images sent through the model and the seconds spent in its forward passes (for peers,
    which do not report queries)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0
        self.seconds = 0.0
        # A fresh nn.Module starts in training mode. torchattacks reads ``model.training`` before an
        # attack and calls ``model.train()`` after it when that was True, which would leave the
        # BatchNorm layers of the wrapped network in training mode for whatever runs next.
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - t
        self.images += len(x)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


__all__ = [
    "CIFAR10_CLASSES",
    "Counting",
    "check_range",
    "cifar_resnet",
    "cifar_test",
    "correct_subset",
    "eval_mode",
    "robust_accuracy",
    "shared_dir",
]
