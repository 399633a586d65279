"""Random Gaussian noise added to the input (a randomized input transformation).

``x + N(0, sigma^2)``, clipped to [0, 1], one draw per forward pass. A plain attack follows the
gradient of a single draw; the adaptive variant uses EOT (Athalye, Engstrom, Ilyas, Kwok, ICML
2018): the gradient of the mean probability over ``eot_samples`` draws.

Example::

    defended = GaussianNoise(sigma=0.1, eot_samples=8).wrap(model)
"""

from __future__ import annotations

import torch

from fragility.budget import parse_number
from fragility.defenses.base import Defense
from fragility.errors import ConfigError


def check_sigma(sigma) -> float:
    s = parse_number(sigma, "sigma")
    if s < 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma!r}")
    return s


def gaussian(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma


class GaussianNoise(Defense):
    name = "gaussian_noise"
    randomized = True

    def __init__(self, *, sigma: float | str = 0.1, **kw) -> None:
        super().__init__(**kw)
        self.sigma = check_sigma(sigma)

    def params(self):
        return {"sigma": self.sigma}

    def transform(self, x, generator=None):
        return (x + gaussian(x, self.sigma, generator)).clamp(0, 1)
