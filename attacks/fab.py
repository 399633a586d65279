"""FAB: the Fast Adaptive Boundary attack, minimum-norm (Linf and L2), targeted (FAB-T) or not.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020. Each step linearizes the decision boundary between the label ``y`` and a class ``k``
(FAB-T: the target, the ``j``-th most likely class on the clean image for ``j = 2 .. k + 1``;
untargeted: the class whose linearized boundary is closest) at the current point ``x_i``:
``{z : f(x_i) + <grad f(x_i), z - x_i> = 0}``, ``f = z_k - z_y``. It projects both ``x_i`` and the
original image ``x_0`` onto that hyperplane intersected with the box [0, 1] (minimal Lp norm:
``d_1``, ``d_2``), then moves to the biased combination

    x_{i+1} = clip((x_i + eta d_1) (1 - a) + (x_0 + eta d_2) a),   a = min(|d_1| / (|d_1| + |d_2|), alpha_max)

(``eta = 1.05`` overshoot, ``alpha_max = 0.1``). When ``x_{i+1}`` is adversarial it is kept if it is
the smallest found so far, and the search steps back towards ``x_0``:
``x_{i+1} = x_0 + beta (x_{i+1} - x_0)`` (``beta = 0.9``). Restarts after the first start from a
random point at distance ``eps / 2``.

The found perturbation is reported per sample in ``extras["fab_norm"]`` (``inf`` when none was
found). The attack is judged at ``eps``: an image counts as fooled only if its found perturbation
is within ``eps``; otherwise the clean image is returned. ``early_stop=True`` (used by AutoAttack)
lets an image leave once its found perturbation is within ``eps`` (same success, fewer queries,
no longer minimal). Each step costs two queries (one forward with backward, one check).

The box-constrained projection onto a hyperplane is solved exactly for both norms: the minimizer
moves every coordinate in the direction of the hyperplane's normal by ``min(lambda |w_i|, room_i)``
(L2) or ``min(delta, room_i)`` (Linf); the total is piecewise linear and monotone in the scalar, so
one sort of the breakpoints per image finds it (written here: no library offers this batched).

Example::

    res = FAB(eps=8/255, n_target_classes=9)(model, images, labels)     # FAB-T
    res.extras["fab_norm"]                                               # found Linf norms
"""

from __future__ import annotations

import torch

from fragility.attacks.gradient import LpAttack, fewer_targets
from fragility.errors import ConfigError
from fragility.flags import parse_flag


def project_onto_hyperplane(p: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest ``d`` (Linf or L2) with ``<w, p + d> = b`` and ``0 <= p + d <= 1``, per row
    (``p``, ``w``: (N, D); ``b``: (N,)). Where the box makes it infeasible, the closest reachable
    point (every coordinate moved as far as the box allows). Computed in float64."""
    dtype = p.dtype
    p, w, b = p.double(), w.double(), b.double()
    c = b - (w * p).sum(1)
    s = torch.where(c >= 0, 1.0, -1.0).to(p)
    ws = w * s[:, None]  # now <ws, d> = |c| with each d_i moving along sign(ws_i)
    a = ws.abs()
    room = torch.where(ws > 0, 1 - p, p).clamp_min(0)
    if norm == "linf":
        t, r = room, a  # d_i = min(delta, room_i)
    else:
        safe = a.clamp_min(1e-300)
        t = torch.where(a > 0, room / safe, torch.full_like(a, 1e300))  # d_i = min(lambda a_i, room_i)
        r = a * a
    sat = a * room
    ts, order = t.sort(1)
    rs, sats = r.gather(1, order), sat.gather(1, order)
    total_r = rs.sum(1, keepdim=True)
    cum_sat, cum_r = sats.cumsum(1), rs.cumsum(1)
    g = cum_sat + ts * (total_r - cum_r)  # the total <ws, d> at each breakpoint: non-decreasing
    target = c.abs()[:, None]
    j = torch.searchsorted(g.contiguous(), target.contiguous()).clamp_max(p.shape[1])  # first breakpoint reaching |c|
    jm = (j - 1).clamp_min(0)
    prev_sat = torch.where(j > 0, cum_sat.gather(1, jm), torch.zeros_like(target))
    prev_r = torch.where(j > 0, cum_r.gather(1, jm), torch.zeros_like(target))
    lam = (target - prev_sat) / (total_r - prev_r).clamp_min(1e-300)
    lam = torch.where(j >= p.shape[1], ts[:, -1:], lam)  # infeasible: saturate everything
    mag = torch.minimum(lam, room) if norm == "linf" else torch.minimum(lam * a, room)
    return (torch.sign(ws) * mag).to(dtype)


def _pnorm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    return f.abs().amax(1) if norm == "linf" else f.norm(dim=1)


class FAB(LpAttack):
    name = "fab"
    sample_extras = ("fab_norm",)

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        targeted: bool = True,
        n_target_classes: int = 9,
        eta: float = 1.05,
        beta: float = 0.9,
        alpha_max: float = 0.1,
        early_stop: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=None, seed=seed)
        for key, v in (("steps", steps), ("restarts", restarts), ("n_target_classes", n_target_classes)):
            if int(v) < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        if not (eta >= 1 and 0 < beta < 1 and 0 <= alpha_max < 1):
            raise ConfigError(f"need eta >= 1, 0 < beta < 1, 0 <= alpha_max < 1; got {eta}, {beta}, {alpha_max}")
        self.steps, self.restarts, self.n_target_classes = int(steps), int(restarts), int(n_target_classes)
        self.fab_targeted, self.early_stop = parse_flag(targeted, "targeted"), parse_flag(early_stop, "early_stop")
        self.eta, self.beta, self.alpha_max = float(eta), float(beta), float(alpha_max)

    def params(self):
        p = {"norm": self.norm_name, "eps": self.eps, "steps": self.steps, "restarts": self.restarts}
        if self.fab_targeted:
            p["n_target_classes"] = self.n_target_classes
        else:
            p["targeted"] = False
        return p

    def fit_classes(self, num_classes):
        if not self.fab_targeted:
            return []
        self.n_target_classes, notes = fewer_targets(self.name, self.n_target_classes, num_classes)
        return notes

    # ---- one run -------------------------------------------------------------------------------
    def _boundary(self, model, x1, labels, targets, idx):
        """Value and input gradient of ``f = z_k - z_y`` for the chosen ``k`` (one forward pass;
        untargeted: one backward per class, then the class with the closest linearized boundary)."""
        x1 = x1.detach().requires_grad_(True)
        logits = model(x1, idx=idx)
        z_y = logits.gather(1, labels[:, None])[:, 0]
        if targets is not None:
            f = logits.gather(1, targets[:, None])[:, 0] - z_y
            (g,) = torch.autograd.grad(f.sum(), x1)
            return f.detach(), g
        c = logits.shape[1]
        fs, gs = [], []
        for k in range(c):
            f = logits[:, k] - z_y
            (g,) = torch.autograd.grad(f.sum(), x1, retain_graph=k < c - 1)
            fs.append(f.detach())
            gs.append(g)
        f_all, g_all = torch.stack(fs, 1), torch.stack(gs, 1)  # (N, C), (N, C, ...)
        dual = g_all.flatten(2).abs().sum(2) if self.norm_name == "linf" else g_all.flatten(2).norm(dim=2)
        dist = f_all.abs() / (dual + 1e-12)
        dist.scatter_(1, labels[:, None], float("inf"))
        k = dist.argmin(1)
        ar = torch.arange(len(k), device=k.device)
        return f_all[ar, k], g_all[ar, k]

    def _single(self, model, images, labels, targets, idx, rng, random_start: bool):
        n = len(images)
        x0 = images.flatten(1)
        x1 = images.clone()
        if random_start:
            if self.norm_name == "linf":
                t = 2 * rng.uniform(*images.shape[1:], idx=idx).to(images) - 1
                t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            else:
                t = rng.normal(*images.shape[1:], idx=idx).to(images)
                t = t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x1 = (images + 0.5 * self.eps * t).clamp(0, 1)
        best = torch.full((n,), float("inf"), device=images.device)
        adv = images.clone()
        live = torch.arange(n, device=images.device)
        for _ in range(self.steps):
            if self.early_stop:
                live = (best > self.eps).nonzero().flatten()
                if len(live) == 0:
                    break
            xl, x0l = x1[live], x0[live]
            tl = targets[live] if targets is not None else None
            f, g = self._boundary(model, xl, labels[live], tl, idx[live])
            w = g.flatten(1)
            b = -f + (w * xl.flatten(1)).sum(1)
            d1 = project_onto_hyperplane(xl.flatten(1), w, b, self.norm_name)
            d2 = project_onto_hyperplane(x0l, w, b, self.norm_name)
            a1 = _pnorm(d1, self.norm_name).clamp_min(1e-8)
            a2 = _pnorm(d2, self.norm_name).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max)[:, None]
            new = ((xl.flatten(1) + self.eta * d1) * (1 - alpha) + (x0l + self.eta * d2) * alpha).clamp(0, 1)
            new = new.view_as(xl)
            with torch.no_grad():
                pred = model(new, idx=idx[live]).argmax(1)
            ok = pred == tl if tl is not None else pred != labels[live]
            size = _pnorm(new - images[live], self.norm_name)
            smaller = ok & (size < best[live])
            at = live[smaller]
            adv[at] = new[smaller]
            best[at] = size[smaller]
            back = images[live] + (new - images[live]) * self.beta
            x1[live] = torch.where(ok.view(-1, 1, 1, 1), back, new)
        return adv, best

    def _run(self, model, images, labels, targets, rng):
        if targets is not None:
            raise ConfigError("fab picks its own targets (FAB-T: the top-k classes); it takes no target")
        n = len(images)
        best = torch.full((n,), float("inf"), device=images.device)
        adv = images.clone()
        if self.fab_targeted:
            with torch.no_grad():
                ranked = model(images).float().argsort(1, descending=True)
            goals = [ranked[:, j] for j in range(1, min(self.n_target_classes, ranked.shape[1] - 1) + 1)]
        else:
            goals = [None]
        for goal in goals:
            for r in range(self.restarts):
                # judged at eps: only images without a perturbation within eps are attacked again
                idx = (best > self.eps).nonzero().flatten() if (self.early_stop or goal is not None) else torch.arange(n)
                idx = idx.to(images.device)
                if len(idx) == 0:
                    break
                t = goal[idx] if goal is not None else None
                a, size = self._single(model, images[idx], labels[idx], t, idx, rng, random_start=r > 0)
                better = size < best[idx]
                adv[idx[better]] = a[better]
                best[idx[better]] = size[better]
        out = torch.where((best <= self.eps).view(-1, 1, 1, 1), adv, images)
        return out, {"fab_norm": best}
