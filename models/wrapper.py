"""The one model interface every attack, defense and metric sees.

A :class:`Classifier` takes float images in [0, 1], NCHW, of a fixed size, normalizes them
inside (mean/std are buffers, so they follow ``.to(device)``) and returns logits. Attacks never
normalize. Class names and input size travel with the model so the runner can check data
against it and pictures can be labelled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from fragility.errors import InputError


class Classifier(nn.Module):
    """Wrap ``net`` (which expects normalized input) as a [0, 1] image classifier.

    Args:
        net: the network; ``net(normalized_images) -> logits``.
        mean, std: per-channel normalization applied inside ``forward``.
        input_size: ``(C, H, W)`` the network expects.
        class_names: one name per output logit.
        name: a short label for leaderboards (``"cifar_resnet20"``).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int],
        class_names: Sequence[str],
        name: str = "model",
    ) -> None:
        super().__init__()
        if len(mean) != input_size[0] or len(std) != input_size[0]:
            raise InputError(f"mean/std need {input_size[0]} values, one per channel")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = tuple(int(s) for s in input_size)
        self.class_names = [str(c) for c in class_names]
        self.name = name
        #: SHA-256 of the checkpoint file the weights came from ("" for weights not from a file);
        #: set by :func:`fragility.models.checkpoint.identify` where checkpoints load
        self.weights_sha256 = ""
        #: why the weights are random ("" when they were loaded or trained); set by
        #: :func:`fragility.models.checkpoint.untrained`, and the runner warns about it
        self.untrained = ""
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``images`` is a float NCHW batch of the right size."""
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise InputError("images must be a float tensor in [0, 1]")
        if images.dim() != 4:
            raise InputError(f"images must be NCHW (4 dims), got shape {tuple(images.shape)}")
        if tuple(images.shape[1:]) != self.input_size:
            c, h, w = self.input_size
            raise InputError(
                f"model {self.name} expects {c}x{h}x{w} images, got "
                f"{'x'.join(map(str, images.shape[1:]))} (resize the dataset or pick another model)"
            )

    def class_index(self, target: int | str) -> int:
        """Resolve a class given as index or name (``"truck"``, ``"toaster"``)."""
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            names = [c.lower() for c in self.class_names]
            key = target.lower().replace("_", " ")
            for i, n in enumerate(names):
                if n == key or n.replace("_", " ") == key:
                    return i
            raise InputError(f"unknown class name {target!r} for model {self.name}")
        idx = int(target)
        if not 0 <= idx < self.num_classes:
            raise InputError(f"class index {idx} out of range for {self.num_classes} classes")
        return idx


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own flag afterwards,
    also when the body raises."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
