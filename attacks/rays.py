"""RayS: hard-label (decision-based) Linf attack by ray search; reads only the predicted class.

Chen & Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack", KDD 2020. A ray from
the image in a sign direction ``d`` in {-1, +1}^D meets the decision boundary at some Linf radius
``r`` (the image ``clip(x + r * d, 0, 1)`` is the first one misclassified along the ray). RayS
looks for the direction with the smallest radius:

- start from ``d = +1`` everywhere, asked at radius 1 (the whole pixel range);
- split the ``C*H*W`` coordinates (in NCHW order) into 2, 4, 8, ... contiguous blocks and flip the
  signs of one block at a time; the flipped direction is asked once at the current best radius,
  and only when it is already misclassified there is its own radius found, by binary search down
  to ``tol`` (every point the search keeps is one the model misclassified);
- an image stops when its radius is within ``eps`` (a success) or it has spent ``queries``.

It needs no gradient and no score: a model that returns only labels, one-hot scores or rounded
probabilities (where Square's margin is flat and gradients are zero) is attacked as it is, which
is why the masking checks' ``label_only`` flag escalates to it (:mod:`fragility.benchmarks.escalation`).
The search is deterministic and its block schedule does not depend on the batch, so a batch gives
the same result as one image at a time. ``extras["boundary_dist"]`` is each image's best radius
(``inf`` when no ray was misclassified); its mean over the robust images is the paper's ADBD.

Example::

    res = RayS(eps=8/255, queries=10000)(model, images, labels)
"""

from __future__ import annotations

import math

import torch

from fragility.attacks.gradient import LpAttack
from fragility.errors import ConfigError


class RayS(LpAttack):
    name = "rays"
    needs_gradients = False
    reads_scores = False

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        queries: int = 10000,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=None, seed=seed)
        if self.norm_name != "linf":
            raise ConfigError("rays searches Linf rays (sign directions); for an L2 budget use attack=square")
        if int(queries) < 1:
            raise ConfigError(f"queries must be >= 1, got {queries}")
        if not (0 < float(tol) < 1):
            raise ConfigError(f"tol must be in (0, 1), got {tol}")
        self.queries, self.tol = int(queries), float(tol)

    def params(self):
        return {"norm": "linf", "eps": self.eps, "queries": self.queries}

    def _run(self, model, images, labels, targets, rng):
        if targets is not None:
            raise ConfigError("rays is untargeted (a ray is kept where the label changes)")
        if self.eps == 0:  # no ray can leave the image: nothing to search, no query spent
            return images, {"boundary_dist": torch.full((len(images),), math.inf, device=images.device)}
        n, dim = len(images), images[0].numel()
        flat = images.flatten(1)
        sign = torch.ones_like(flat)
        radius = torch.full((n,), math.inf, device=images.device)
        spent = torch.zeros(n, dtype=torch.long, device=images.device)

        def fooled(idx: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            """One query for each image of ``idx``: is ``clip(x + r * d)`` misclassified?"""
            x = (flat[idx] + r[:, None] * d).clamp(0, 1).view(-1, *images.shape[1:])
            spent[idx] += 1
            return model(x, idx=idx).argmax(1) != labels[idx]

        level, block, first = 0, 0, True
        while True:
            # an image is active until its boundary is within eps or its queries are spent
            idx = ((radius > self.eps) & (spent < self.queries)).nonzero().flatten()
            if len(idx) == 0:
                break
            size = math.ceil(dim / 2**level)
            start, end = block * size, min(dim, (block + 1) * size)
            trial = sign[idx].clone()
            if not first:  # the first query of all asks the unflipped direction
                trial[:, start:end] *= -1
                block += 1
                if block == 2**level or end == dim:
                    level, block = level + 1, 0
            first = False
            known = torch.isfinite(radius[idx])
            hi = torch.where(known, radius[idx], torch.ones_like(radius[idx]))
            with torch.no_grad():
                ok = fooled(idx, trial, hi)
                lo = torch.zeros_like(hi)
                # binary search of the boundary on the rays that are misclassified at the current radius,
                # until it is within tol, or within eps (the image is then broken: more digits buy nothing)
                while True:
                    go = ok & (hi - lo > self.tol) & (hi > self.eps) & (spent[idx] < self.queries)
                    if not go.any():
                        break
                    j = go.nonzero().flatten()
                    mid = (lo[j] + hi[j]) / 2
                    hit = fooled(idx[j], trial[j], mid)
                    hi[j] = torch.where(hit, mid, hi[j])
                    lo[j] = torch.where(hit, lo[j], mid)
            better = ok & (hi < radius[idx])
            radius[idx[better]] = hi[better]
            sign[idx[better]] = trial[better]
        r = radius.clamp(max=self.eps)
        adv = (flat + r[:, None] * sign).clamp(0, 1).view_as(images)
        return adv, {"boundary_dist": radius}
