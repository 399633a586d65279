"""Image priors for gradient ascent, as composable pieces, and Yosinski's four published settings.

Yosinski, Clune, Nguyen, Fuchs, Lipson, "Understanding Neural Networks Through Deep
Visualization", ICML Deep Learning Workshop 2015, section 3 and Table 1. After every ascent step
the image is regularized in turn by

- :class:`L2Decay` (``theta_decay``): shrink toward the mean image, ``x <- c + (1 - rate)(x - c)``;
- :class:`Blur` (``theta_b_width``, ``theta_b_every``): Gaussian blur of width ``sigma`` pixels every
  ``every`` steps (torchvision's ``gaussian_blur``);
- :class:`NormClip` (``theta_n_pct``): pixels whose norm over channels is below that percentile of
  the image are set to the mean;
- :class:`ContributionClip` (``theta_c_pct``): pixels whose contribution ``|sum_c (x - c) * grad|``
  (the linear estimate of what setting them to the mean would cost) is below that percentile are
  set to the mean.

:class:`Jitter` (random translation of the network's input each step, Mordvintsev et al.'s
"DeepDream" prior) acts before the forward pass instead. ``c`` is the model's normalization mean
(Yosinski's nets worked on mean-subtracted images, so "zero" is the mean image).

The presets are the four rows of Table 1 with the step counts and learning-rate policies of the
authors' toolbox (deep-visualization-toolbox, ``doc/optimize.md``); their learning rates are in
raw 0-255 pixel units and :mod:`fragility.attacks.ascent` converts them. Blur widths are in pixels,
as published (on 32x32 CIFAR images a width of 1 pixel is relatively stronger than on 227x227).

Example::

    priors = [L2Decay(1e-4), Blur(1.0, every=4)]      # or preset("yosinski3").priors
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fragility.errors import ConfigError
from fragility.rng import SampleRNG


class Prior:
    """One regularizer. ``transform`` changes the network's input (differentiably) before the
    forward pass; ``regularize`` changes the image after the ascent step. Both default to no-ops."""

    def transform(self, x: torch.Tensor, step: int, rng: SampleRNG | None, idx: torch.Tensor | None) -> torch.Tensor:
        return x

    def regularize(self, x: torch.Tensor, grad: torch.Tensor, step: int, center: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class L2Decay(Prior):
    def __init__(self, rate: float) -> None:
        if not 0 <= float(rate) < 1:
            raise ConfigError(f"L2 decay rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def regularize(self, x, grad, step, center):
        return center + (1.0 - self.rate) * (x - center) if self.rate else x


class Blur(Prior):
    def __init__(self, sigma: float, every: int = 1) -> None:
        if float(sigma) < 0 or int(every) < 1:
            raise ConfigError(f"blur needs sigma >= 0 and every >= 1, got sigma={sigma}, every={every}")
        self.sigma, self.every = float(sigma), int(every)

    def regularize(self, x, grad, step, center):
        if self.sigma <= 0 or step % self.every:
            return x
        side = min(x.shape[-2:])
        k = min(2 * math.ceil(3 * self.sigma) + 1, side - 1 if side % 2 == 0 else side)  # odd, fits the image
        # imported here: any torchvision import loads torch._dynamo (~1 s), which every process of a
        # sweep would pay although most runs never blur
        from torchvision.transforms.v2.functional import gaussian_blur

        return gaussian_blur(x, [k, k], [self.sigma, self.sigma]) if k >= 3 else x


class Jitter(Prior):
    """Random cyclic shift of up to ``pixels`` in each direction, a fresh one per sample and step.
    Written with gather indices rather than ``torch.roll`` so every sample gets its own shift in
    one vectorized call (and stays differentiable)."""

    def __init__(self, pixels: int) -> None:
        if int(pixels) < 0:
            raise ConfigError(f"jitter must be >= 0 pixels, got {pixels}")
        self.pixels = int(pixels)

    def transform(self, x, step, rng, idx):
        if not self.pixels:
            return x
        n, c, h, w = x.shape
        j = self.pixels
        if rng is None:
            shift = torch.randint(-j, j + 1, (n, 2), device=x.device)
        else:
            shift = rng.randint(2 * j + 1, 2, idx=idx).to(x.device) - j
        rows = (torch.arange(h, device=x.device)[None, :] - shift[:, :1]) % h  # (n, h)
        cols = (torch.arange(w, device=x.device)[None, :] - shift[:, 1:]) % w  # (n, w)
        b = torch.arange(n, device=x.device)[:, None, None, None]
        ch = torch.arange(c, device=x.device)[None, :, None, None]
        return x[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


def _below_percentile(score: torch.Tensor, pct: float) -> torch.Tensor:
    """Per-sample mask of the pixels whose ``score`` (n, h, w) is below the ``pct`` percentile."""
    flat = score.flatten(1)
    q = torch.quantile(flat, pct / 100.0, dim=1, keepdim=True)
    return (flat < q).view_as(score)


class NormClip(Prior):
    def __init__(self, percentile: float) -> None:
        if not 0 <= float(percentile) < 100:
            raise ConfigError(f"norm-clip percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def regularize(self, x, grad, step, center):
        if not self.percentile:
            return x
        small = _below_percentile((x - center).norm(dim=1), self.percentile)
        return torch.where(small[:, None], center.expand_as(x), x)


class ContributionClip(Prior):
    def __init__(self, percentile: float) -> None:
        if not 0 <= float(percentile) < 100:
            raise ConfigError(f"contribution-clip percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def regularize(self, x, grad, step, center):
        if not self.percentile:
            return x
        small = _below_percentile(((x - center) * grad).sum(dim=1).abs(), self.percentile)
        return torch.where(small[:, None], center.expand_as(x), x)


@dataclass(frozen=True)
class Preset:
    """A named setting: priors plus the step count and learning-rate policy they were published with.

    ``lr`` and ``max_lr`` are in raw 0-255 pixel units (see :func:`fragility.attacks.ascent.ascend`);
    ``policy`` is ``constant`` (step ``lr * grad``) or ``progress`` (step chosen so a linear model of
    the objective rises by ``desired_prog``, at most ``max_lr``)."""

    name: str
    priors: tuple[Prior, ...]
    steps: int
    policy: str
    lr: float = 0.0
    max_lr: float = math.inf
    desired_prog: float = 0.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _yosinski(row: int, decay: float, width: float, every: int, n_pct: float, c_pct: float, steps: int, **lr: Any) -> Preset:
    priors: list[Prior] = []
    if decay:
        priors.append(L2Decay(decay))
    if width and every:
        priors.append(Blur(width, every))
    if n_pct:
        priors.append(NormClip(n_pct))
    if c_pct:
        priors.append(ContributionClip(c_pct))
    return Preset(
        name=f"yosinski{row}", priors=tuple(priors), steps=steps, source=f"Yosinski et al. 2015, Table 1 row {row}", **lr
    )


#: Table 1 of Yosinski et al. (2015), in the paper's order; row 3 made most of the paper's pictures.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _yosinski(1, 0.0, 0.5, 4, 50, 0, 500, policy="progress", max_lr=100.0, desired_prog=2.0),
        _yosinski(2, 0.3, 0.0, 0, 20, 0, 750, policy="constant", lr=100.0),
        _yosinski(3, 1e-4, 1.0, 4, 0, 0, 1000, policy="constant", lr=100.0),
        _yosinski(4, 0.0, 0.5, 4, 0, 90, 1000, policy="progress", max_lr=1e8, desired_prog=2.0),
    )
}


def preset(name: str) -> Preset:
    """A published setting by name (``yosinski1`` .. ``yosinski4``)."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown prior preset {name!r} (valid: {', '.join(PRESETS)})")
    return PRESETS[key]


def build_priors(
    *,
    decay: float = 0.0,
    blur: float = 0.0,
    blur_every: int = 1,
    jitter: int = 0,
    norm_pct: float = 0.0,
    contrib_pct: float = 0.0,
) -> list[Prior]:
    """Priors from plain numbers (what a config file holds); zero switches a piece off."""
    out: list[Prior] = []
    if jitter:
        out.append(Jitter(jitter))
    if decay:
        out.append(L2Decay(decay))
    if blur:
        out.append(Blur(blur, blur_every))
    if norm_pct:
        out.append(NormClip(norm_pct))
    if contrib_pct:
        out.append(ContributionClip(contrib_pct))
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image anisotropic total variation, mean absolute difference of neighbouring pixels
    (so images of different sizes compare)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw
