"""Sparse-RS: random search for sparse perturbations (black box, reads only the model's logits).

Croce, Andriushchenko, Singh, Flammarion, Hein, "Sparse-RS: a versatile framework for query-efficient
sparse black-box adversarial attacks", AAAI 2022. Every changed pixel takes a colour at a corner of
the colour cube ({0, 1}^C). The search keeps one current perturbation per image and proposes one
change per step; the change is kept when the margin loss drops (or the image is fooled).

Threat models (``mode``):

- ``pixels``: at most ``k`` pixels change. A step moves ``max(1, int(p(it) * k))`` of the current
  pixels to places not yet used, with fresh corner colours; ``p`` follows the paper's schedule for
  L0 (``p_init`` halved at 50 steps, /4 at 200, ... /20 after 8,000, on a 10,000-step clock).
  With ``k = 1`` a step replaces the whole perturbation, so random search is sampling of
  (position, corner colour); here it walks the ``H * W * 2^C`` candidates *without replacement*
  (no candidate is asked twice, and the walk is complete at ``H * W * 2^C`` queries) in one of two
  orders (``order``):

  - ``guided`` (default): first every position once, with the corner farthest from its clean
    colour (``1 - round(x)`` per channel), positions in a random order; then the other corners,
    position by position from the one whose probe lowered the margin most. One pixel that flips the
    class is usually where the far corner already moved the margin, so successes come early;
  - ``random``: one per-image random order of all candidates (the paper's sampling, without
    repeats).
- ``patch``: a ``size x size`` patch anywhere in the image. Steps alternate (every 4th step moves
  the patch by up to ``0.75 * H * (1 - it / queries)`` pixels; the others recolour a square of side
  ``max(1, int(sqrt(p(it)) * size))`` inside it with one corner colour), the paper's schedule for
  patches (``p_init`` halved at 10 steps, ... /512 after 8,000).
- ``frame``: the border of width ``width``. A step paints a square of side
  ``3 * ceil(((1 - it/10k) - 0.5) * p_init * width^2)`` (one pixel once that is 0) from a random
  frame pixel in a random diagonal direction with one corner colour, masked to the frame.

``universal=True`` (``mode=patch`` or ``frame``): one patch (its content and its place) or one frame
for every image of the call, searched with the same steps, kept when it fools more of the images
(ties: a lower summed margin). Every step asks the model about every image, so each image's queries
are the steps taken; the search stops when all images are fooled or at ``queries``. The result
depends on the whole batch by design (the runner's ``batch_size`` sets how many images share one
patch); its random draws come from the first image's stream.

``exhaustive=True`` (``mode=pixels``, ``k=1``): every position x every corner colour, in the same
order, batched over images and candidates (``max_batch`` rows per model call), stopping per image
at the first success. Its failures are images that no single corner-coloured pixel can flip: a
complete answer for that threat model, so its success is an upper bound for any k=1 attack that
uses corner colours. Candidates equal to the clean pixel are skipped (they change nothing).

Margin loss on logits: untargeted ``z_y - max_{j != y} z_j``, targeted ``max_{j != t} z_j - z_t``;
an image stops at the first candidate that the model misclassifies (targeted: puts in the target
class), and its queries (counted by the base class's ``QueryCounter``) stop there. The random
searches send one candidate per image and step, so their count is exactly the step that succeeded.
The k = 1 walks (random order and exhaustive) send an image's candidates in growing groups (1 per
model call for its first 128 candidates, then ``candidates tried / 64``, at most ``max_batch``), so
fewer than 2% of its count can be candidates sent after its success in the same call.
Batched over images; every random draw comes from the image's own stream and every group size from
the image's own progress, so a batch gives the same result and counts as one image at a time.

Example::

    res = SparseRS(mode="pixels", k=1, queries=10000)(model, images, labels)
    res = SparseRS(mode="patch", size=4)(model, images, labels, targets=t)
    res = SparseRS(mode="pixels", k=1, exhaustive=True)(model, images, labels)   # complete for k=1
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fragility.attacks.base import Attack, other_class_targets
from fragility.errors import ConfigError
from fragility.flags import parse_flag

MODES = ("pixels", "patch", "frame")
ORDERS = ("guided", "random")  # the k = 1 walks' candidate order
P_INIT = {"pixels": 0.3, "patch": 0.4, "frame": 2.0}
LOC_PERIOD = 4  # patch: every 4th step moves the patch (the paper's update_loc_period)


def p_schedule_pixels(it: int, total: int, p_init: float) -> float:
    """The paper's L0 schedule on a clock rescaled to 10,000 steps: the fraction of the k pixels moved."""
    it = int(it / total * 10000)
    for edge, div in ((50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12), (8000, 15)):
        if it <= edge:
            return p_init if it <= 0 else p_init / div
    return p_init / 20


def p_schedule_patch(it: int, total: int, p_init: float) -> float:
    """The paper's patch schedule (rescaled to 10,000 steps): the area fraction of the square recoloured."""
    it = int(it / total * 10000)
    for edge, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= edge:
            return p_init / div
    return p_init / 512


def frame_side(it: int, total: int, p_init: float, width: int) -> int:
    """The paper's frame schedule: side of the square painted at step ``it`` (1 in the second half)."""
    it = int(it / total * 10000)
    p = max(((10000 - it) / 10000 - 0.5) * p_init * width**2, 0.0)
    return max(3 * math.ceil(p), 1)


class SparseRS(Attack):
    name = "sparse_rs"
    norm = "l0"
    needs_gradients = False
    #: per image: search steps (random search) or candidates tried (k = 1 walks)
    sample_extras = ("steps",)

    def __init__(
        self,
        *,
        mode: str = "pixels",
        k: int = 1,
        size: int = 4,
        width: int = 1,
        queries: int = 10000,
        p_init: float | None = None,
        exhaustive: bool = False,
        order: str = "guided",
        universal: bool = False,
        fold_bn: bool = True,
        max_batch: int = 128,
        targeted: bool = False,
        target: int | str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(target=target, seed=seed)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for key, v in (("k", k), ("size", size), ("width", width), ("queries", queries), ("max_batch", max_batch)):
            if int(v) < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        exhaustive, universal = parse_flag(exhaustive, "exhaustive"), parse_flag(universal, "universal")
        if exhaustive and (mode != "pixels" or int(k) != 1):
            raise ConfigError("exhaustive=true is the one-pixel check: it needs mode=pixels and k=1")
        if universal and mode == "pixels":
            raise ConfigError("universal=true needs mode=patch or mode=frame (one patch or frame for all images)")
        self.universal, self.fold_bn = universal, parse_flag(fold_bn, "fold_bn")
        if order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.order = order
        self.mode, self.k, self.size, self.width = mode, int(k), int(size), int(width)
        self.queries, self.exhaustive, self.max_batch = int(queries), exhaustive, int(max_batch)
        self.p_init = float(P_INIT[mode] if p_init is None else p_init)
        if self.p_init <= 0:
            raise ConfigError(f"p_init must be > 0, got {p_init}")
        self.want_targeted = parse_flag(targeted, "targeted") or target is not None
        # the leaderboard's threat-model column: pixels / patch side / frame width, all in pixels
        self.norm = {"pixels": "l0", "patch": "l0_patch", "frame": "l0_frame"}[mode]

    @property
    def targeted(self) -> bool:
        return self.want_targeted

    @property
    def budget(self) -> float:
        return float({"pixels": self.k, "patch": self.size, "frame": self.width}[self.mode])

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"mode": self.mode}
        p.update({"pixels": {"k": self.k}, "patch": {"size": self.size}, "frame": {"width": self.width}}[self.mode])
        if self.mode == "pixels" and self.k == 1:
            p["order"] = self.order  # always: the k = 1 walk was random-only before "guided" existed
        if self.universal:
            p["universal"] = True
        if self.exhaustive:
            p["exhaustive"] = True  # complete for one corner-coloured pixel: no query budget
        else:
            p["queries"] = self.queries
            if self.p_init != P_INIT[self.mode]:
                p["p_init"] = self.p_init
        if not self.fold_bn:
            p["fold_bn"] = False
        if self.want_targeted:
            p["target"] = "other" if self.target is None else self.target
        return p

    def make_targets(self, model, labels):
        """``target`` given: that class. ``targeted`` alone: for each image the class
        ``(label + 1 + seed mod (C - 1)) mod C`` (as ``onepixel``)."""
        if self.target is not None or not self.want_targeted:
            return super().make_targets(model, labels)
        return other_class_targets(model, labels, self.seed)

    # ---- the threat model -------------------------------------------------------------------
    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Restore every pixel outside the threat model: the ``k`` most changed pixels (pixels), the
        ``size x size`` window with the largest change (patch), or the border (frame)."""
        n, _c, h, w = images.shape
        change = (adv - images).abs().amax(1)  # (N, H, W)
        if self.mode == "pixels":
            flat = change.flatten(1)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep.scatter_(1, flat.topk(min(self.k, h * w), dim=1).indices, True)
            keep = (keep & (flat > 0)).view(n, h, w)
        elif self.mode == "patch":
            s = min(self.size, h, w)
            mass = torch.nn.functional.avg_pool2d(change[:, None], s, stride=1)[:, 0].flatten(1)  # (N, windows)
            at = mass.argmax(1)
            r0, c0 = at // (w - s + 1), at % (w - s + 1)
            rr, cc = torch.arange(h, device=adv.device), torch.arange(w, device=adv.device)
            inr = (rr[None] >= r0[:, None]) & (rr[None] < r0[:, None] + s)
            inc = (cc[None] >= c0[:, None]) & (cc[None] < c0[:, None] + s)
            keep = inr[:, :, None] & inc[:, None, :]
        else:
            keep = frame_mask(h, w, self.width, adv.device).expand(n, h, w)
        return torch.where(keep[:, None], adv, images)

    # ---- the attack --------------------------------------------------------------------------
    def _check_fits(self, h: int, w: int) -> None:
        """A budget the image cannot hold is a configuration error, not a silent clamp: the record
        would name a threat model that was never run."""
        if self.mode == "pixels" and self.k > h * w:
            raise ConfigError(f"k={self.k} is more than the {h * w} pixels of each {h}x{w} image")
        if self.mode == "patch" and self.size > min(h, w):
            raise ConfigError(f"size={self.size} does not fit in each {h}x{w} image")
        if self.mode == "frame" and 2 * self.width >= min(h, w):
            raise ConfigError(f"width={self.width} makes the frame the whole {h}x{w} image (at most {(min(h, w) - 1) // 2})")

    def _run(self, model, images, labels, targets, rng):
        self._check_fits(*images.shape[-2:])
        goal = targets if targets is not None else labels
        targeted = targets is not None

        # candidates go through the model's BatchNorm-folded copy where it has one (models/fold.py:
        # the same logits to float rounding, 1.2-1.3x faster on resnet20); every apparent success is
        # then asked again of the model itself (one more query), so a success means what it says
        fast = self.fold_bn and model.has_folded_copy

        def evaluate(x: torch.Tensor, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss = torch.empty(len(x), device=x.device)
            ok = torch.empty(len(x), dtype=torch.bool, device=x.device)
            for s in range(0, len(x), self.max_batch):
                o, xs = owner[s : s + self.max_batch], x[s : s + self.max_batch]
                m, hit = margin(model(xs, idx=o, inference=fast), goal[o], targeted)
                if fast and hit.any():
                    r = hit.nonzero().flatten()
                    m[r], hit[r] = margin(model(xs[r], idx=o[r]), goal[o[r]], targeted)
                loss[s : s + self.max_batch], ok[s : s + self.max_batch] = m, hit
            return loss, ok

        with torch.inference_mode():
            if self.mode == "pixels" and self.k == 1:
                adv, steps = self._enumerate(images, rng, evaluate)
            else:
                init, propose, render = {"pixels": self._pixels, "patch": self._patch, "frame": self._frame}[self.mode](
                    images, rng
                )
                if self.universal:
                    adv, steps = universal_search(
                        init, propose, self._spread(images, render), evaluate, self.queries, images.device
                    )
                else:
                    adv, steps = random_search(init, propose, render, evaluate, len(images), self.queries, images.device)
        return adv.clone(), {"steps": steps.clone()}

    def _enumerate(self, images, rng, evaluate):
        """k = 1: walk each image's candidates (position x corner colour) in the order of
        ``self.order``, many images and candidates per model call, until the first success or the
        budget (``exhaustive``: until every candidate has been asked)."""
        n, c, h, w = images.shape
        ncol, npos = 2**c, h * w
        corners = corner_colours(c, images.device)  # (2^C, C)
        total = npos * ncol
        # a candidate equal to the clean pixel changes nothing: push it behind all others and skip it
        same = (images.permute(0, 2, 3, 1).reshape(n, npos, 1, c) == corners[None, None]).all(-1).reshape(n, total)
        budget = (total - same.sum(1)).clamp_max(total if self.exhaustive else self.queries)
        walk = _Walk(images, corners, evaluate, self.max_batch)
        order = walk_order(self.order, images, rng, lambda probes: walk.run(probes, budget.clamp_max(npos), record=True))
        walk.run(order, budget)
        return walk.result()

    # each threat model: (init, propose, render) over a state tuple of per-image tensors
    def _pixels(self, images, rng):
        n, c, h, w = images.shape
        k = min(self.k, h * w)
        corners = corner_colours(c, images.device)
        pixels = images.permute(0, 2, 3, 1).reshape(n, h * w, c)

        def fresh(pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            # a corner colour different from the clean pixel at ``pos`` (m, e): such a change does something
            return other_corner(pixels[idx[:, None], pos], corners, rng, idx)

        def init(idx):
            perm = rng.uniform(h * w, idx=idx).argsort(1)  # first k: the changed pixels
            return perm, fresh(perm[:, :k], idx)

        def propose(state, idx, it):
            perm, col = state
            e = max(int(p_schedule_pixels(it, self.queries, self.p_init) * k), 1)
            slot = rng.uniform(k, idx=idx).argsort(1)[:, :e]  # which of the k move
            dest = k + rng.uniform(h * w - k, idx=idx).argsort(1)[:, :e] if h * w > k else slot  # to which unused place
            perm = perm.clone()
            a = torch.arange(len(idx), device=perm.device)[:, None]
            moved, unused = perm[a, slot], perm[a, dest]
            perm[a, slot], perm[a, dest] = unused, moved
            col = col.clone()
            col[a, slot] = fresh(unused, idx)
            return perm, col

        def render(state, idx):
            perm, col = state
            x = images.index_select(0, idx)
            pos = perm[:, :k]
            x.permute(0, 2, 3, 1)[torch.arange(len(x), device=x.device)[:, None], pos // w, pos % w] = col
            return x

        return init, propose, render

    def _patch(self, images, rng):
        _n, c, h, w = images.shape
        s = min(self.size, h, w)
        corners = corner_colours(c, images.device)
        ar = torch.arange(s, device=images.device)

        def init(idx):
            loc = torch.cat([rng.randint(h - s + 1, 1, idx=idx), rng.randint(w - s + 1, 1, idx=idx)], 1)
            patch = corners[rng.randint(len(corners), s * s, idx=idx)].view(len(idx), s, s, c)  # random corner pixels
            return loc, patch

        def propose(state, idx, it):
            loc, patch = state
            shift = int(max((self.queries - it) / self.queries, 0.0) * 0.75 * h)
            if it % LOC_PERIOD == 0 and shift > 0:
                step = rng.randint(2 * shift + 1, 2, idx=idx) - shift
                hi = torch.tensor([h - s, w - s], device=loc.device)
                return torch.minimum((loc + step).clamp_min(0), hi), patch
            q = max(int(math.sqrt(p_schedule_patch(it, self.queries, self.p_init)) * s), 1)
            q = min(q, s)
            at = rng.randint(s - q + 1, 2, idx=idx)
            inside = lambda d: (ar[None] >= at[:, d, None]) & (ar[None] < at[:, d, None] + q)
            square = inside(0)[:, :, None] & inside(1)[:, None, :]  # (m, s, s)
            a = torch.arange(len(idx), device=patch.device)
            current = patch[a, at[:, 0], at[:, 1]][:, None]  # colour at the square's corner
            colour = (
                other_corner(current, corners, rng, idx)[:, 0] if q == 1 else corners[rng.randint(len(corners), 1, idx=idx)[:, 0]]
            )
            return loc, torch.where(square[..., None], colour[:, None, None], patch)

        def render(state, idx):
            loc, patch = state
            x = images.index_select(0, idx)
            rows, cols = loc[:, 0, None] + ar, loc[:, 1, None] + ar
            x.permute(0, 2, 3, 1)[torch.arange(len(x), device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]] = (
                patch
            )
            return x

        return init, propose, render

    def _frame(self, images, rng):
        _n, c, h, w = images.shape
        corners = corner_colours(c, images.device)
        mask = frame_mask(h, w, self.width, images.device)  # (1, H, W)
        where = mask[0].flatten().nonzero().flatten()  # frame pixels
        ar = torch.arange(max(h, w), device=images.device)

        def init(idx):
            x = images.index_select(0, idx)
            col = corners[rng.randint(len(corners), len(where), idx=idx)]  # (m, F, C)
            x.flatten(2)[:, :, where] = col.transpose(1, 2)
            return (x,)

        def propose(state, idx, it):
            (x,) = state
            q = frame_side(it, self.queries, self.p_init, self.width)
            a = torch.arange(len(idx), device=x.device)
            anchor = where[rng.randint(len(where), 1, idx=idx)[:, 0]]
            sign = rng.randint(2, 2, idx=idx) * 2 - 1  # diagonal direction
            rows = (anchor[:, None] // w + sign[:, :1] * ar[None, :q]).clamp(0, h - 1)
            cols = (anchor[:, None] % w + sign[:, 1:] * ar[None, :q]).clamp(0, w - 1)
            current = x.permute(0, 2, 3, 1)[a, anchor // w, anchor % w][:, None]
            colour = other_corner(current, corners, rng, idx)[:, 0]
            new = x.clone()
            new.permute(0, 2, 3, 1)[a[:, None, None], rows[:, :, None], cols[:, None, :]] = colour[:, None, None]
            return (torch.where(mask[:, None], new, images.index_select(0, idx)),)

        def render(state, idx):
            return state[0]

        return init, propose, render

    def _spread(self, images, render):
        """Universal: render one state (leading dimension 1) onto every image."""
        n, _c, h, w = images.shape
        every = torch.arange(n, device=images.device)
        if self.mode == "patch":  # the state is the patch and its place: render it on each image
            return lambda state: render(tuple(t.expand(n, *t.shape[1:]) for t in state), every)
        mask = frame_mask(h, w, self.width, images.device)[:, None]  # the state is image 0 with the frame
        return lambda state: torch.where(mask, render(state, every[:1]).expand(n, -1, -1, -1), images)

    # ---- hooks for the runner -------------------------------------------------------------------
    def extra_metrics(self, result) -> dict[str, Any]:
        out: dict[str, Any] = {"exhaustive": self.exhaustive}
        ok = result.success
        if len(ok) and ok.any():
            q = result.queries[ok].float()
            out["mean_queries_success"] = float(q.mean())
            out["median_queries_success"] = float(q.median())
        return out


class _Walk:
    """The k = 1 walks' loop: each image sends the candidates of its own ``order`` (indices
    ``position * 2^C + corner``) in growing groups until its first success or its budget. ``run`` can
    be called again with a longer order that starts with the same candidates: the walk goes on where
    it stopped (the guided order's second phase)."""

    def __init__(self, images, corners, evaluate, max_batch: int) -> None:
        n, dev = len(images), images.device
        self.images, self.corners, self.evaluate, self.max_batch = images, corners, evaluate, max_batch
        self.ptr = torch.zeros(n, dtype=torch.long, device=dev)
        self.best = torch.full((n,), torch.inf, device=dev)
        self.best_j = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.done = torch.zeros(n, dtype=torch.bool, device=dev)

    def _paint(self, x: torch.Tensor, j: torch.Tensor) -> None:
        ncol, w = len(self.corners), x.shape[-1]
        pos = j // ncol
        x.permute(0, 2, 3, 1)[torch.arange(len(x), device=x.device), pos // w, pos % w] = self.corners[j % ncol]

    def run(self, order: torch.Tensor, limit: torch.Tensor, record: bool = False) -> torch.Tensor | None:
        """Walk ``order`` (n, m) up to ``limit`` candidates per image. ``record``: also return the loss
        of every candidate asked, (n, m), inf where not asked."""
        dev = order.device
        seen = torch.full(order.shape, torch.inf, device=dev) if record else None
        while True:
            act = ((~self.done) & (self.ptr < limit)).nonzero().flatten()
            if not len(act):
                break
            # each image sends 1 candidate per call at first, then ptr/64 (at most max_batch): few wasted
            # queries after a success (< 2%), full model calls later, and counts that do not depend on
            # which other images share the batch
            per = (self.ptr[act] // 64).clamp(1, self.max_batch)
            chunk = int(per.max())
            step = torch.arange(chunk, device=dev)
            offs = self.ptr[act, None] + step
            valid = (step[None] < per[:, None]) & (offs < limit[act, None])
            rows, cols = valid.nonzero(as_tuple=True)
            owner = act[rows]
            j = order[owner, offs[rows, cols]]
            x = self.images.index_select(0, owner)
            self._paint(x, j)
            loss, ok = self.evaluate(x, owner)
            if seen is not None:
                seen[owner, offs[rows, cols]] = loss
            # per image: the first succeeding candidate of this call, else the lowest loss
            score = torch.where(ok, cols.float() - 1e9, loss)
            low = torch.full((len(act), chunk), torch.inf, device=dev)
            low[rows, cols] = score
            pick = low.argmin(1)
            jj = torch.zeros((len(act), chunk), dtype=torch.long, device=dev)
            jj[rows, cols] = j
            okm = torch.zeros((len(act), chunk), dtype=torch.bool, device=dev)
            okm[rows, cols] = ok
            lossm = torch.full((len(act), chunk), torch.inf, device=dev)
            lossm[rows, cols] = loss
            a = torch.arange(len(act), device=dev)
            hit = okm[a, pick]
            improve = hit | (lossm[a, pick] < self.best[act])
            self.best_j[act[improve]] = jj[a, pick][improve]
            self.best[act[improve]] = lossm[a, pick][improve]
            self.done[act[hit]] = True
            self.ptr[act] += valid.sum(1)
        return seen

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The best candidate of each image painted in (the clean image where none was asked), and
        the candidates each image asked."""
        adv = self.images.clone()
        asked = (self.best_j >= 0).nonzero().flatten()
        if len(asked):
            sub = adv[asked]
            self._paint(sub, self.best_j[asked])
            adv[asked] = sub
        return adv, self.ptr


def walk_order(order: str, images: torch.Tensor, rng, probe, rank: str = "signed", colours: str = "index") -> torch.Tensor:
    """The k = 1 walks' candidate order, (n, H * W * 2^C) indices ``position * 2^C + corner``, the
    clean pixel's own colours last (the walks skip them: they change nothing).

    ``probe(candidates)`` asks (n, H * W) candidates and returns their losses (inf where an image
    stopped before asking): the guided order's first phase. ``rank`` and ``colours`` are the second
    phase's rules (``benchmarks/peers/k1_order_study.py`` compares them): positions by their probe's
    loss (``signed``, lowest first) or by how far it moved from the median probe (``spread``, either
    way); a position's other corners by index (``index``) or nearest the far corner first (``far``).
    """
    n, c, h, w = images.shape
    dev = images.device
    corners = corner_colours(c, dev)
    ncol, npos = len(corners), h * w
    total = npos * ncol
    pixel = images.permute(0, 2, 3, 1).reshape(n, npos, c)
    same = (pixel[:, :, None] == corners[None, None]).all(-1).reshape(n, total)
    if order == "random":
        return (rng.uniform(total) + same.float() * 2).argsort(1)
    # guided: first every position once, with the corner farthest from its clean colour (1 - round(x)
    # per channel; never the clean pixel itself), in a random order of positions ...
    far = ((1 - pixel.round()) * 2 ** torch.arange(c, device=dev)).sum(-1).long()  # corner index
    positions = rng.uniform(npos).argsort(1)
    probes = positions * ncol + far.gather(1, positions)
    probe_loss = probe(probes)
    # ... then the other corners, position by position from the one whose probe lowered the margin
    # most (resnet20 on 210 CIFAR-10 images held out from the benchmark, benchmarks/peers/k1_order_study.py:
    # every image that one pixel can flip fell within 1,599 queries this way; in a random order 2,979
    # on the first 60 of them, where guided needed 1,061)
    loss_at = torch.full((n, npos), torch.inf, device=dev)
    loss_at.scatter_(1, positions, probe_loss)
    if rank == "spread":
        finite = loss_at.isfinite()
        centre = torch.where(finite, loss_at, torch.nan).nanmedian(1, keepdim=True).values
        score = torch.where(finite, -(loss_at - centre).abs(), torch.inf)
    else:
        score = loss_at
    rank_at = score.argsort(1).argsort(1).float()  # (n, npos): 0 = most promising position
    cand = torch.arange(total, device=dev)
    if colours == "far":  # bits that differ from the far corner: 1, then 2, ... (ties by index)
        diff = (cand % ncol)[None] ^ far.repeat_interleave(ncol, 1)
        bits = sum(((diff >> b) & 1) for b in range(c)).float()
        within = (bits * ncol + (cand % ncol)[None]) / (ncol * (c + 1))
    else:
        within = (cand % ncol).float()[None] / ncol
    key = rank_at.repeat_interleave(ncol, 1) + within  # by position, then colour
    key = key.masked_fill((cand % ncol)[None] == far.repeat_interleave(ncol, 1), torch.inf)  # asked already
    key = key + same.float() * 2 * npos  # the clean pixel's own colour last (skipped by the budget)
    return torch.cat([probes, key.argsort(1)[:, : total - npos]], 1)


def random_search(init, propose, render, evaluate, n: int, budget: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The search loop every random-search threat model shares: one proposal per unfinished image
    and step, kept when its loss is lower or it succeeds; an image stops at its first success."""
    idx = torch.arange(n, device=device)
    state = list(init(idx))
    best, done = evaluate(render(state, idx), idx)
    steps = torch.ones(n, dtype=torch.long, device=device)
    for it in range(1, budget):
        act = (~done).nonzero().flatten()
        if not len(act):
            break
        new = propose(tuple(t[act] for t in state), act, it)
        loss, ok = evaluate(render(new, act), act)
        steps[act] += 1
        keep = ok | (loss < best[act])
        for t, nt in zip(state, new):
            t[act[keep]] = nt[keep]
        best[act[keep]] = loss[keep]
        done[act[ok]] = True
    return render(state, idx), steps


def universal_search(init, propose, spread, evaluate, budget: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One state for all images: a proposal is kept when it fools more images, or as many with a
    lower summed margin; every step evaluates every image (``spread`` renders the state on all)."""
    first = torch.zeros(1, dtype=torch.long, device=device)  # the random draws: the first image's stream
    state = tuple(init(first))
    x = spread(state)
    every = torch.arange(len(x), device=device)
    loss, ok = evaluate(x, every)
    steps = 1
    for it in range(1, budget):
        if bool(ok.all()):
            break
        new = propose(state, first, it)
        new_x = spread(new)
        new_loss, new_ok = evaluate(new_x, every)
        steps += 1
        fooled, new_fooled = int(ok.sum()), int(new_ok.sum())
        if new_fooled > fooled or (new_fooled == fooled and float(new_loss.sum()) < float(loss.sum())):
            state, x, loss, ok = new, new_x, new_loss, new_ok
    return x, torch.full((len(x),), steps, dtype=torch.long, device=device)


def margin(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The margin loss to minimize and success, from logits (untargeted: goal = label)."""
    z = logits.float()
    zg = z.gather(1, goal[:, None]).squeeze(1)
    other = z.scatter(1, goal[:, None], -torch.inf).amax(1)
    pred = z.argmax(1)
    return (other - zg, pred == goal) if targeted else (zg - other, pred != goal)


def corner_colours(c: int, device) -> torch.Tensor:
    """The 2^C corners of the colour cube, (2^C, C), corner i's channel j = bit j of i."""
    i = torch.arange(2**c, device=device)
    return ((i[:, None] >> torch.arange(c, device=device)) & 1).float()


def other_corner(current: torch.Tensor, corners: torch.Tensor, rng, idx: torch.Tensor) -> torch.Tensor:
    """Random corner colours (m, e, C) that differ from ``current`` (m, e, C) wherever it is a corner."""
    _m, e, _ = current.shape
    r0 = rng.randint(len(corners), e, idx=idx)
    r1 = rng.randint(len(corners) - 1, e, idx=idx)
    pick = torch.where((corners[r0] == current).all(-1), (r0 + 1 + r1) % len(corners), r0)
    return corners[pick]


def frame_mask(h: int, w: int, width: int, device) -> torch.Tensor:
    """(1, H, W) bool: True on the border of ``width`` pixels."""
    r, c = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = (r < width) | (r >= h - width)
    cols = (c < width) | (c >= w - width)
    return (rows[:, None] | cols[None, :])[None]
