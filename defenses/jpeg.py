"""JPEG compression as a defense (Dziugaite et al. 2016; Das et al. 2017; Guo et al., ICLR 2018).

Images are rounded to 8 bits, encoded at ``quality`` and decoded again with torchvision's JPEG
codec (libjpeg; a batch goes through as one list call). The codec has no gradient: in the
standard variant the attack sees the true derivative of a piecewise-constant map (zero), in the
adaptive variant BPDA (identity backward). Athalye et al. 2018 broke it that way.

Example::

    defended = JPEG(quality=75).wrap(model)
"""

from __future__ import annotations

import torch

from fragility.defenses.base import Defense
from fragility.errors import ConfigError


def zero_gradient(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (computed outside autograd) with derivative 0 w.r.t. ``x``: the exact derivative
    of a quantizer almost everywhere, so a plain gradient attack sees what the defense shows."""
    return value.detach() + 0.0 * x


class JPEG(Defense):
    name = "jpeg"
    differentiable = False

    def __init__(self, *, quality: int = 75, **kw) -> None:
        super().__init__(**kw)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ConfigError(f"jpeg quality must be an integer in 1..100, got {quality!r}")
        self.quality = quality

    def params(self):
        return {"quality": self.quality}

    def transform(self, x, generator=None):
        u8 = (x.detach() * 255).round_().clamp_(0, 255).to("cpu", torch.uint8)
        from torchvision.io import decode_jpeg, encode_jpeg  # on first use: importing torchvision costs ~1 s

        decoded = decode_jpeg(encode_jpeg(list(u8), quality=self.quality))
        out = torch.stack(decoded).to(x.device, x.dtype).div_(255.0)
        return zero_gradient(x, out)
