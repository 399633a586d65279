"""Bit-depth reduction (feature squeezing; Xu, Evans, Qi, NDSS 2018).

Each channel value is rounded to ``bits`` bits: ``round(x * (2^bits - 1)) / (2^bits - 1)``. The
rounding has derivative 0 almost everywhere, so a plain gradient attack stalls; BPDA (identity
backward) removes the obstacle (Athalye et al. 2018).

Example::

    defended = BitDepth(bits=4).wrap(model)
"""

from __future__ import annotations

import torch

from fragility.defenses.base import Defense
from fragility.errors import ConfigError


class BitDepth(Defense):
    name = "bit_depth"
    differentiable = False

    def __init__(self, *, bits: int = 4, **kw) -> None:
        super().__init__(**kw)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"bit_depth bits must be an integer in 1..8, got {bits!r}")
        self.bits = bits

    def params(self):
        return {"bits": self.bits}

    def transform(self, x, generator=None):
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels
