"""The one gradient-ascent loop behind fooling images, class visualization and filter visualization.

Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising Image Classification
Models and Saliency Maps", ICLR 2014 workshop; Nguyen, Yosinski, Clune, "Deep Neural Networks are
Easily Fooled", CVPR 2015; Yosinski et al. 2015 (priors: :mod:`fragility.attacks.priors`).

``ascend(objective, x0, ...)`` maximizes a per-sample score over images in [0, 1], a whole batch
at once. Each step: priors' ``transform`` (jitter) -> ``objective(x, idx)`` -> input gradient ->
step (``policy``) -> priors' ``regularize`` (decay, blur, clipping) -> clamp to [0, 1]. A sample
stops (keeps its image, no more forward passes) once the objective reports it ``done``.

Step policies (``lr`` in [0, 1] pixel units unless said otherwise):

- ``sign``: ``lr * sign(grad)`` (an Linf step; what fooling uses by default);
- ``rms``: ``lr * grad / rms(grad)`` (gradient normalized per image each step: filter visualization);
- ``constant``: ``lr * grad`` with ``lr`` in raw 0-255 pixel units, as Yosinski's presets are
  published (``x_raw = 255 x``, so the [0, 1] step is ``lr / 255**2 * grad``);
- ``progress``: the step along ``grad`` that raises a linear model of the objective by
  ``desired_prog``, capped at ``max_lr`` (raw units). Unit-free, so it matches the toolbox exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fragility.attacks.priors import Prior
from fragility.errors import ConfigError
from fragility.rng import SampleRNG

POLICIES = ("sign", "rms", "constant", "progress")
RAW = 255.0**2  # raw 0-255 pixel units -> [0, 1] units for a gradient step (see module docstring)

#: ``objective(x, idx) -> (score, done)``: per-sample scores to maximize for the rows of ``x``
#: (``idx``: their positions in the batch) and, optionally, a bool mask of samples that may stop.
Objective = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass
class AscentResult:
    x: torch.Tensor  # (N, C, H, W) in [0, 1]
    steps: torch.Tensor  # int64: ascent steps each sample took
    done: torch.Tensor  # bool: the objective declared the sample done
    score: torch.Tensor  # the last score seen for each sample


def check_policy(policy: str) -> str:
    policy = str(policy).lower()
    if policy not in POLICIES:
        raise ConfigError(f"unknown step policy {policy!r} (valid: {', '.join(POLICIES)})")
    return policy


def step_direction(
    grad: torch.Tensor, policy: str, lr: float, max_lr: float = math.inf, desired_prog: float = 0.0
) -> torch.Tensor:
    """The ascent step for ``grad`` (one row per image) under ``policy``."""
    view = (-1,) + (1,) * (grad.dim() - 1)
    if policy == "sign":
        return lr * grad.sign()
    if policy == "rms":
        return lr * grad / grad.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(view)
    if policy == "constant":
        return (lr / RAW) * grad
    sq = grad.pow(2).flatten(1).sum(1).clamp_min(1e-20)
    rate = torch.clamp(desired_prog / sq, max=max_lr / RAW)
    return rate.view(view) * grad


def ascend(
    objective: Objective,
    x0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    policy: str = "sign",
    max_lr: float = math.inf,
    desired_prog: float = 0.0,
    priors: Sequence[Prior] = (),
    center: torch.Tensor | float = 0.5,
    rng: SampleRNG | None = None,
    keep_best: bool = False,
) -> AscentResult:
    """Gradient ascent on ``objective`` from ``x0`` (see the module docstring). With
    ``keep_best`` each sample returns the image with the highest score seen (the toolbox's
    ``best_X``: a blur or clipping step can lower the score), at one more forward pass."""
    policy = check_policy(policy)
    if int(steps) < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    x = x0.detach().clone()
    n = len(x)
    center_t = torch.as_tensor(center, dtype=x.dtype, device=x.device)
    center_t = center_t.view(1, -1, 1, 1) if center_t.dim() else center_t.view(1, 1, 1, 1)
    used = torch.zeros(n, dtype=torch.long, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    score_all = torch.full((n,), float("nan"), device=x.device)
    active = torch.arange(n, device=x.device)
    best_x, best_s = x.clone(), torch.full((n,), float("-inf"), device=x.device)
    for t in range(int(steps)):
        xa = x[active].requires_grad_(True)
        xin = xa
        for p in priors:
            xin = p.transform(xin, t, rng, active)
        score, stop = objective(xin, active)
        (grad,) = torch.autograd.grad(score.sum(), xa)
        score_all[active] = score.detach().float()
        if keep_best:
            up = score.detach().float() > best_s[active]
            best_s[active[up]] = score.detach().float()[up]
            best_x[active[up]] = xa.detach()[up]
        if stop is not None and bool(stop.any()):
            done[active[stop]] = True
            keep = ~stop
            active, xa, grad = active[keep], xa[keep], grad[keep]
            if not len(active):
                break
        xa = xa.detach() + step_direction(grad, policy, lr, max_lr, desired_prog)
        for p in priors:
            xa = p.regularize(xa, grad, t, center_t)
        x[active] = xa.clamp(0.0, 1.0)
        used[active] += 1
    if keep_best:  # score the final image too, then keep each sample's best
        with torch.no_grad():
            final, _ = objective(x, torch.arange(n, device=x.device))
        take = final.float() >= best_s
        x = torch.where(take.view(-1, 1, 1, 1), x, best_x)
        score_all = torch.where(take, final.float(), best_s)
    return AscentResult(x=x, steps=used, done=done, score=score_all)
