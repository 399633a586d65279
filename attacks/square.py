"""Square Attack: score-based random search, no gradients (Linf and L2).

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020. The attack keeps one perturbation per image and proposes a
change inside one random square window per step; the change is kept when the margin loss
``z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``) decreases. It reads only logits,
so it works on models whose gradients are useless or missing (``needs_gradients = False``).

- Linf: start from vertical stripes of ``+-eps`` (one sign per column and channel); a step sets a
  ``s x s`` window to ``x + eps * sign`` with one random sign per channel (drawn again, up to
  three times, when it would change nothing).
- L2: start from a grid of ``+-`` "pseudo-Gaussian" blocks scaled to norm ``eps``; a step moves the
  perturbation mass of a second random window into the first one, as a fresh pseudo-Gaussian
  block plus the old content, keeping the total norm at ``eps`` (the paper's Algorithm 3).

The side ``s = round(sqrt(p * H * W))`` follows the paper's schedule for ``p``: ``p_init`` (0.8, as
in AutoAttack) halved at steps 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a clock
rescaled to 10,000 steps. ``queries`` caps the forward passes per image, the first one included;
an image stops at its first success (its queries stop there). Every random draw comes from the
image's own stream, and every image has its own window, so a batch gives the same result as one
image at a time.

``precision="bf16"`` evaluates candidates under bfloat16 autocast. On a robust model the survivors
spend all their queries, so Square runs at the speed of the forward pass; on this 2-core CPU
bf16 doubles resnet20's throughput at the batch sizes Square uses (``benchmarks/peers/
bench_autoattack.py``). A bf16 margin only steers the search: every apparent success is re-checked
in float32 (one more query, inside the same ``queries`` cap) before the image stops, so success
means what it means in ``"fp32"``.

``fold_bn=True`` (the default) asks the model's folded copy for candidate margins where it has one
(:func:`fragility.models.fold.folded_copy`: BatchNorm folded into the convolutions, exact to float
rounding, ~10% faster forwards for resnet20 at Square's batch sizes); apparent successes are then
re-checked on the model itself in the same way, so folding changes speed, not what success means.

Example::

    res = Square(eps=8/255, queries=5000)(model, images, labels)
"""

from __future__ import annotations

import math

import torch

from fragility.attacks.gradient import LpAttack
from fragility.attacks.losses import margin
from fragility.errors import ConfigError
from fragility.flags import parse_flag
from fragility.precision import check_precision, warn_if_emulated

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it: int, total: int, p_init: float) -> float:
    """The paper's fraction of pixels changed per step at step ``it`` of ``total`` (rescaled to 10k)."""
    it = int(it / total * 10000)
    halvings = sum(it > edge for edge in _HALVINGS)
    return p_init / 2**halvings


def pseudo_gaussian(s: int, transpose: torch.Tensor) -> torch.Tensor:
    """The paper's L2 block: two ``s/2 x s`` halves of nested rectangles weighted ``1/(k+1)^2``, of
    opposite signs, unit L2 norm; ``transpose`` (bool, per image) rotates it by 90 degrees.
    Returns ``(N, 1, s, s)``."""

    def rectangles(h: int, w: int) -> torch.Tensor:
        r = torch.arange(h)[:, None].float()
        c = torch.arange(w)[None, :].float()
        # ring index of each cell around the centre (h//2, w//2), as in the paper's construction
        k = torch.maximum((r - (h // 2)).abs(), (c - (w // 2)).abs())
        kmax = max(h // 2 + 1, w // 2 + 1)
        d = torch.zeros(h, w)
        for j in range(kmax):  # cumulative weight of the rings that cover the cell
            d += (k <= j).float() / (j + 1) ** 2
        return d / d.norm().clamp_min(1e-12)

    top = rectangles(s // 2, s) if s // 2 > 0 else torch.zeros(0, s)
    block = torch.cat([top, -rectangles(s - s // 2, s)], 0)
    block = (block / block.norm().clamp_min(1e-12)).to(transpose.device)  # built on the CPU; follows the mask
    out = torch.where(transpose.view(-1, 1, 1), block.t()[None], block[None])
    return out[:, None]


def window_mask(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """``(N, 1, H, W)`` bool mask of the ``s x s`` window at ``(vh, vw)`` of each image."""
    rr = torch.arange(h, device=vh.device)
    cc = torch.arange(w, device=vh.device)
    rows = (rr[None] >= vh[:, None]) & (rr[None] < vh[:, None] + s)
    cols = (cc[None] >= vw[:, None]) & (cc[None] < vw[:, None] + s)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def crop(t: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, s: int) -> torch.Tensor:
    """``(N, C, s, s)`` windows of ``t`` at per-image positions."""
    ar = torch.arange(s, device=t.device)
    n = torch.arange(len(t), device=t.device)
    rows = (vh[:, None] + ar[None])[:, :, None]
    cols = (vw[:, None] + ar[None])[:, None, :]
    return t[n[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def paste(block: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(N, C, H, W)`` zeros with ``block`` (``(N, C, s, s)``) placed at per-image positions."""
    n, c, s, _ = block.shape
    out = block.new_zeros(n, c, h, w)
    ar = torch.arange(s, device=block.device)
    idx = torch.arange(n, device=block.device)
    rows = (vh[:, None] + ar[None])[:, :, None]
    cols = (vw[:, None] + ar[None])[:, None, :]
    out[idx[:, None, None], :, rows, cols] = block.permute(0, 2, 3, 1)
    return out


def _position(rng, idx, high: int, device) -> torch.Tensor:
    """One uniform integer in ``[0, high)`` per image of ``idx``."""
    return rng.randint(high, 1, idx=idx)[:, 0].to(device)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


class Square(LpAttack):
    name = "square"
    needs_gradients = False

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        queries: int = 5000,
        p_init: float = 0.8,
        precision: str = "fp32",
        fold_bn: bool = True,
        target=None,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=target, seed=seed)
        if int(queries) < 1:
            raise ConfigError(f"queries must be >= 1, got {queries}")
        if not 0 < float(p_init) <= 1:
            raise ConfigError(f"p_init must be in (0, 1], got {p_init}")
        check_precision(precision)
        self.queries, self.p_init, self.precision = int(queries), float(p_init), precision
        self.fold_bn = parse_flag(fold_bn, "fold_bn")

    def params(self):
        p = {"norm": self.norm_name, "eps": self.eps, "queries": self.queries}
        if self.p_init != 0.8:
            p["p_init"] = self.p_init
        if self.precision != "fp32":
            p["precision"] = self.precision
        if not self.fold_bn:
            p["fold_bn"] = False
        return p

    # ---- helpers ---------------------------------------------------------------------------------
    def _margin(self, model, x, labels, targets, idx, low: bool = False, fast: bool = False):
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
            logits = model(x, idx=idx, inference=fast).float()
        m = -margin(logits, labels, targets)  # the paper's margin: > 0 while the attack fails
        ok = logits.argmax(1) == targets if targets is not None else logits.argmax(1) != labels
        return m, ok

    def _checked_margin(self, model, x, labels, targets, idx, used):
        """The margin and success of ``x``: from the fast path (bf16, the folded copy, or both)
        with every apparent success re-checked on the model itself in fp32 (the re-check is a
        query, counted in ``used``), or from the model in fp32."""
        fast = self.fold_bn and model.has_folded_copy
        if self.precision == "fp32" and not fast:
            return self._margin(model, x, labels, targets, idx)
        m, ok = self._margin(model, x, labels, targets, idx, low=self.precision == "bf16", fast=fast)
        rows = (ok & (used[idx] < self.queries)).nonzero().flatten()
        ok = torch.zeros_like(ok)
        if len(rows):
            t = targets[rows] if targets is not None else None
            m[rows], ok[rows] = self._margin(model, x[rows], labels[rows], t, idx[rows])
            used[idx[rows]] += 1
        return m, ok

    def _init(self, images: torch.Tensor, rng, lo=None, hi=None) -> torch.Tensor:
        _, c, h, w = images.shape
        if self.norm_name == "linf":
            return torch.where(rng.uniform(c, 1, w).to(images.device) < 0.5, lo, hi)
        s = max(h // 5, 1)
        start_h, start_w = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
        block = pseudo_gaussian(s, torch.zeros(1, dtype=torch.bool))[0, 0].to(images)
        delta = torch.zeros_like(images)
        signs = torch.where(rng.uniform(h // s, w // s, c) < 0.5, -1.0, 1.0).to(images)
        for i in range(h // s):
            for j in range(w // s):
                r, q = start_h + i * s, start_w + j * s
                delta[:, :, r : r + s, q : q + s] += block * signs[:, i, j, :, None, None]
        return (images + delta / _l2(delta).clamp_min(1e-12) * self.eps).clamp(0, 1)

    def _corners(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x - eps`` and ``x + eps`` clipped to [0, 1] and projected once: every Linf value Square
        writes is one of the two, so its candidates are inside the ball by construction and need
        no projection per step (at the small batches of a robust model's survivors that projection,
        a float64 check, cost ~4% of each step)."""
        lo = self.project((images - self.eps).clamp(0, 1), images).clamp(0, 1)
        hi = self.project((images + self.eps).clamp(0, 1), images).clamp(0, 1)
        return lo, hi

    def _propose_linf(self, x, best, it, rng, idx, lo, hi):
        n, c, h, w = x.shape
        s = max(round(math.sqrt(self.p_schedule(it) * h * w)), 1)
        s = min(s, h - 1, w - 1) if min(h, w) > 1 else 1
        # one draw per step for the window and three colour tries: each draw is ~30 small tensor ops,
        # which at the small batches of a robust model's survivors cost about as much as the forward pass
        u = rng.uniform(2 + 3 * c, idx=idx).to(x.device)
        vh = (u[:, 0] * (h - s + 1)).long().clamp_max(h - s)
        vw = (u[:, 1] * (w - s + 1)).long().clamp_max(w - s)
        mask = window_mask(vh, vw, s, h, w)
        new = best
        pending = torch.ones(n, dtype=torch.bool, device=x.device)
        for t in range(3):  # a new colour that changes nothing wastes a query: try the next one
            low = (u[:, 2 + t * c : 2 + (t + 1) * c] < 0.5).view(n, c, 1, 1)
            cand = torch.where(mask, torch.where(low, lo, hi), best)
            new = torch.where(pending.view(-1, 1, 1, 1), cand, new)
            pending = pending & ((new - best).abs().flatten(1).amax(1) < 1e-7)
            if not bool(pending.any()):
                break
        return new

    def _propose_l2(self, x, best, it, rng, idx):
        _, c, h, w = x.shape
        s = max(round(math.sqrt(self.p_schedule(it) * h * w)), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)

        vh, vw = _position(rng, idx, h - s + 1, x.device), _position(rng, idx, w - s + 1, x.device)
        vh2, vw2 = _position(rng, idx, h - s + 1, x.device), _position(rng, idx, w - s + 1, x.device)
        delta = best - x
        mask1, mask2 = window_mask(vh, vw, s, h, w), window_mask(vh2, vw2, s, h, w)
        win1 = crop(delta, vh, vw, s)
        norm_win1 = win1.pow(2).sum((-2, -1), keepdim=True).sqrt()
        norm_image = _l2(delta)
        norm_windows = _l2(delta * (mask1 | mask2))
        transpose = (rng.uniform(1, idx=idx)[:, 0] > 0.5).to(x.device)
        signs = torch.where(rng.uniform(c, 1, 1, idx=idx) < 0.5, -1.0, 1.0).to(x)
        block = pseudo_gaussian(s, transpose).to(x) * signs + win1 / (norm_win1 + 1e-12)
        budget = ((self.eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        block = block / (block.pow(2).sum((-2, -1), keepdim=True).sqrt() + 1e-12) * budget
        delta = torch.where(mask2, torch.zeros_like(delta), delta)
        delta = torch.where(mask1, paste(block, vh, vw, h, w), delta)
        return (x + delta / _l2(delta).clamp_min(1e-12) * self.eps).clamp(0, 1)

    def p_schedule(self, it: int) -> float:
        return p_schedule(it, self.queries, self.p_init)

    # ---- the search ----------------------------------------------------------------------------
    def _run(self, model, images, labels, targets, rng):
        n = len(images)
        warn_if_emulated(self.precision, images.device)
        if self.eps == 0:
            return images
        all_idx = torch.arange(n, device=images.device)
        used = torch.ones(n, dtype=torch.long, device=images.device)  # forward passes per image
        linf = self.norm_name == "linf"
        lo, hi = self._corners(images) if linf else (None, None)
        best = self._init(images, rng, lo, hi)
        loss, done = self._checked_margin(model, best, labels, targets, all_idx, used)
        for it in range(1, self.queries):
            active = (~done & (used < self.queries)).nonzero().flatten()
            if len(active) == 0:
                break
            x = images[active]
            if linf:  # inside by construction (_corners)
                cand = self._propose_linf(x, best[active], it, rng, active, lo[active], hi[active])
            else:
                cand = self.project(self._propose_l2(x, best[active], it, rng, active), x).clamp(0, 1)
            t = targets[active] if targets is not None else None
            used[active] += 1
            new_loss, ok = self._checked_margin(model, cand, labels[active], t, active, used)
            better = (new_loss < loss[active]) | ok
            keep = active[better]
            best[keep] = cand[better]
            loss[keep] = new_loss[better]
            done[active[ok]] = True
        return best
