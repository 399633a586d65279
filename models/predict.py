"""Predict with confidence: the one batched inference loop every report, figure and script uses."""

from __future__ import annotations

import torch
from torch import nn

from fragility.models.wrapper import eval_mode


@torch.inference_mode()
def predict(
    model: nn.Module, images, batch_size: int = 256, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its softmax probability for every image, on the CPU.

    ``images`` is a float tensor in [0, 1] (NCHW) or a dataset with ``images(slice)`` and ``len``
    (an :class:`~fragility.datasets.ImageSet`, kept as uint8 until each batch is taken). The model
    runs in eval mode; its own modes are restored afterwards."""
    if device is None:
        device = next((t.device for t in list(model.parameters())[:1] + list(model.buffers())[:1]), torch.device("cpu"))
    take = images.images if hasattr(images, "images") else images.__getitem__
    preds, confs = [], []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            p = torch.softmax(model(take(slice(i, i + batch_size)).to(device)).float(), 1)
            c, k = p.max(1)
            preds.append(k.cpu())
            confs.append(c.cpu())
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(preds), torch.cat(confs)
