"""Batched patch placement: one ``affine_grid``/``grid_sample`` call pastes a patch into a whole batch.

Each image gets its own rotation, scale and location. The patch's colours are resampled from the
patch tensor (bilinear, differentiable with respect to the patch); the mask is hard and covers
exactly ``round(area * scale * H * W)`` pixels: pixels are ranked by their signed distance to the
rotated square's (or circle's) edge and the nearest-inside ones are kept. Written here, rather than
with ``transforms.v2.RandomAffine`` (one random draw per call, not per image, and an interpolated
mask whose area drifts with rotation), because it buys per-sample transforms in one call and an
exact pixel budget at every scale and angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = ("square", "circle")


@dataclass
class Placement:
    """Per-sample transform parameters (all tensors of length N)."""

    scale: torch.Tensor  # multiplies the area (1 = the requested area)
    angle: torch.Tensor  # radians
    cx: torch.Tensor  # patch centre, in pixels (x = column)
    cy: torch.Tensor


def n_pixels(area: float, h: int, w: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """How many pixels a patch of ``area`` (fraction of the image) at ``scale`` covers."""
    s = torch.as_tensor(scale, dtype=torch.float64)
    return torch.round(area * s * h * w).clamp(1, h * w).long()


def side_pixels(area: float, h: int, w: int, shape: str, scale: torch.Tensor) -> torch.Tensor:
    """Side (square) or diameter (circle) in pixels of a shape covering ``area * scale`` of the image."""
    a = area * scale * h * w
    return torch.sqrt(a if shape == "square" else 4 * a / math.pi)


def random_placement(
    n: int,
    h: int,
    w: int,
    area: float,
    shape: str,
    rotation: float,
    scale: tuple[float, float],
    uniform,
    device: torch.device | str = "cpu",
) -> Placement:
    """Random scale in ``scale``, angle in ``[-rotation, rotation]`` degrees and a location that keeps
    the (rotated) patch inside the image. ``uniform(k)`` returns an (n, k) tensor in [0, 1): a
    :class:`~fragility.rng.SampleRNG`'s per-sample stream or ``torch.rand``."""
    u = uniform(4).to(device)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ang = math.radians(rotation) * (2 * u[:, 1] - 1)
    side = side_pixels(area, h, w, shape, s)
    half = side / 2 * ((ang.cos().abs() + ang.sin().abs()) if shape == "square" else 1.0)
    # centre range per axis; a patch larger than the image is centred
    lo_x, hi_x = half.clamp(max=w / 2), (w - half).clamp(min=w / 2)
    lo_y, hi_y = half.clamp(max=h / 2), (h - half).clamp(min=h / 2)
    return Placement(s, ang, lo_x + (hi_x - lo_x) * u[:, 2], lo_y + (hi_y - lo_y) * u[:, 3])


def patch_coords(pl: Placement, h: int, w: int, side: torch.Tensor) -> torch.Tensor:
    """For every pixel centre of an ``h x w`` image, its coordinates in the patch frame
    ((N, H, W, 2), the patch spanning [-1, 1] on both axes), i.e. the sampling grid."""
    dev = pl.cx.device
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    dx = xs[None, None, :] - pl.cx[:, None, None]  # (N, 1, W)
    dy = ys[None, :, None] - pl.cy[:, None, None]  # (N, H, 1)
    c, s = pl.angle.cos()[:, None, None], pl.angle.sin()[:, None, None]
    k = (2 / side)[:, None, None]
    u = (c * dx + s * dy) * k  # rotate by -angle, then scale to [-1, 1]
    v = (-s * dx + c * dy) * k
    return torch.stack([u, v], dim=-1)


def placement_mask(pl: Placement, h: int, w: int, area: float, shape: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid, mask): the sampling grid (N, H, W, 2) and a hard float mask (N, 1, H, W) covering
    exactly :func:`n_pixels` pixels per sample."""
    side = side_pixels(area, h, w, shape, pl.scale.float())
    grid = patch_coords(pl, h, w, side)
    if shape == "square":
        inside = 1 - grid.abs().amax(-1)
    else:
        inside = 1 - grid.norm(dim=-1)
    # rank pixels by how deep inside the shape they are; keep the first k (exact count, ties broken by position)
    depth = (inside * side[:, None, None]).flatten(1)
    order = depth.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=order.device).expand_as(order))
    k = n_pixels(area, h, w, pl.scale).to(order.device)
    mask = (rank < k[:, None]).view(-1, 1, h, w).float()
    return grid, mask


def apply_patch(images: torch.Tensor, patch: torch.Tensor, pl: Placement, area: float, shape: str) -> torch.Tensor:
    """Paste ``patch`` (C, P, P) into every image of ``images`` (N, C, H, W) at placement ``pl``.
    Differentiable with respect to ``patch``; values stay in [0, 1] when both inputs do."""
    n, _c, h, w = images.shape
    grid, mask = placement_mask(pl, h, w, area, shape)
    pasted = F.grid_sample(
        patch[None].expand(n, -1, -1, -1).to(images.dtype),
        grid.to(images.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return images * (1 - mask) + pasted * mask


def shape_mask(size: int, shape: str) -> torch.Tensor:
    """The patch's own (P, P) mask: all ones for a square, a disc for a circle (for the PNG's alpha)."""
    if shape == "square":
        return torch.ones(size, size)
    r = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return ((r[None, :] ** 2 + r[:, None] ** 2) <= 1).float()
