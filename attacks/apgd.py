"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself, no step to tune.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1). From a random start, ``steps`` iterations of

    z = P(x_k + eta * step(grad))        x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))

(the first step without momentum), ``P`` the projection onto the Linf / L2 ball of radius ``eps`` and
[0, 1], ``step`` the sign (Linf) or the L2-normalized gradient. The step size starts at
``2 * eps`` and is halved at checkpoints ``w_j = ceil(p_j * steps)``, ``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, for each image where

1. the loss increased in at most ``rho * (w_j - w_{j-1})`` of the steps since the last checkpoint
   (``rho = 0.75``), or
2. the step size was not halved at the last checkpoint and the best loss has not improved since;

a halved image restarts from its best point. ``loss``: ``ce`` (cross-entropy), ``dlr`` (difference
of logits ratio, scale invariant) or ``margin`` (:mod:`fragility.attacks.losses`); with targets
(``target=`` or ``targets=``) the targeted form. ``restarts`` runs again from a fresh random start
on the images not fooled yet. ``eot_iter`` (for randomized models): the gradient is the mean of that
many forward/backward draws, each counted as a query. An image leaves the batch at its first
success (its adversarial image is kept and it costs no more queries), so the cost follows the
images that resist. With ``eot_iter = 1`` an image also leaves when its gradient is exactly zero
at a point that did not move and is its own best point (a saturated or quantized model): for a
deterministic model no later step could move it. Every image's random start comes from its own stream: a batch gives the
same result as one image at a time.

Example::

    res = APGD(eps=8/255, loss="dlr", steps=100)(model, images, labels)
"""

from __future__ import annotations

import torch

from fragility.attacks.gradient import LpAttack, check_loss, loss_and_gradient, project
from fragility.attacks.losses import LossFn, get_loss
from fragility.errors import ConfigError

MOMENTUM = 0.75


def _flat(t: torch.Tensor, op: str) -> torch.Tensor:
    f = t.flatten(1)
    v = f.abs().amax(1) if op == "linf" else f.norm(dim=1)
    return v.view(-1, *([1] * (t.dim() - 1)))


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based counts of finished steps) at which the step size is checked: the
    paper's ``w_j``, computed the way the authors' code does (first gap ``0.22 N``, each next gap
    ``0.03 N`` shorter, at least ``0.06 N``)."""
    k, decr, k_min = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], k
    while at <= steps:
        out.append(at)
        k = max(k - decr, k_min)
        at += k
    return out


class StepControl:
    """APGD's step-size rule for a batch: call :meth:`check` after every step with the history of
    losses (row 0: the start, row ``i``: after step ``i``) and the best loss so far; it returns the
    images whose step size to halve at a checkpoint (all False between checkpoints)."""

    def __init__(self, steps: int, loss0: torch.Tensor, rho: float = 0.75) -> None:
        self.k = max(int(0.22 * steps), 1)
        self.decr, self.k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
        self.rho = rho
        self.since = 0
        self.best_last = loss0.clone()
        # the authors' code: condition 2 cannot fire at the first checkpoint
        self.reduced_last = torch.ones_like(loss0, dtype=torch.bool)

    def check(self, hist: torch.Tensor, i: int, loss_best: torch.Tensor) -> torch.Tensor:
        """``hist``: (i + 1, N) losses; ``i`` steps done. Returns a bool mask of shape (N,)."""
        self.since += 1
        if self.since < self.k:
            return torch.zeros_like(loss_best, dtype=torch.bool)
        window = hist[i - self.k : i + 1]
        increases = (window[1:] > window[:-1]).sum(0)
        cond1 = increases <= self.rho * self.k
        cond2 = ~self.reduced_last & (self.best_last >= loss_best)
        halve = cond1 | cond2
        self.reduced_last = halve
        self.best_last = loss_best.clone()
        self.k = max(self.k - self.decr, self.k_min)
        self.since = 0
        return halve


def apgd_run(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_targets: torch.Tensor | None,
    goal_targets: torch.Tensor | None,
    *,
    loss_fn: LossFn,
    norm: str,
    eps: float,
    steps: int,
    rng,
    idx: torch.Tensor,
    rho: float = 0.75,
    eot_iter: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start on the images ``idx`` (rows of the attacked batch, for the
    query counter and the random streams). ``loss_targets``: targets of the loss (None:
    untargeted loss); ``goal_targets``: what counts as success (None: the label changed).
    Returns (adversarial or highest-loss images, fooled mask, final step sizes / eps)."""
    n = len(images)
    dev = images.device
    if norm == "linf":
        t = 2 * rng.uniform(*images.shape[1:], idx=idx).to(images) - 1
        x = images + eps * t / _flat(t, "linf").clamp_min(1e-12)
    else:
        t = rng.normal(*images.shape[1:], idx=idx).to(images)
        x = images + eps * t / _flat(t, "l2").clamp_min(1e-12)
    x = project(x, images, norm, eps).clamp(0, 1)  # a fixed point of the projection (no 1-ulp drift)

    def evaluate(x_at: torch.Tensor, act: torch.Tensor):
        tl = loss_targets[act] if loss_targets is not None else None
        total = torch.zeros_like(x_at)
        for _ in range(eot_iter):
            loss, grad, logits = loss_and_gradient(model, x_at, labels[act], tl, loss_fn, idx=idx[act])
            total += grad
        pred = logits.argmax(1)
        ok = pred == goal_targets[act] if goal_targets is not None else pred != labels[act]
        return loss, total / eot_iter, ok

    every = torch.arange(n, device=dev)
    loss, grad, fooled = evaluate(x, every)
    x_adv_out = x.clone()  # the first adversarial point found, else the highest-loss point
    x_best, grad_best, loss_best = x.clone(), grad.clone(), loss.clone()
    step = torch.full((n, 1, 1, 1), 2.0 * eps, device=dev)
    hist = torch.zeros(steps + 1, n, device=dev)
    hist[0] = loss
    control = StepControl(steps, loss, rho)
    x_old = x.clone()
    stuck = torch.zeros(n, dtype=torch.bool, device=dev)
    for i in range(steps):
        act = (~fooled & ~stuck).nonzero().flatten()
        if len(act) == 0:
            break
        xa, xi, g = x[act], images[act], grad[act]
        direction = g.sign() if norm == "linf" else g / _flat(g, "l2").clamp_min(1e-12)
        z = project(xa + step[act] * direction, xi, norm, eps).clamp(0, 1)
        a = MOMENTUM if i > 0 else 1.0
        new = project(xa + a * (z - xa) + (1 - a) * (xa - x_old[act]), xi, norm, eps).clamp(0, 1)
        x_old[act] = xa
        x[act] = new
        loss_a, grad_a, ok = evaluate(new, act)
        grad[act] = grad_a
        hist[i + 1, act] = loss_a
        won = act[ok]
        x_adv_out[won] = new[ok]
        fooled[won] = True
        better = loss_a > loss_best[act]
        up = act[better]
        x_best[up], grad_best[up], loss_best[up] = new[better], grad_a[better], loss_a[better]
        if eot_iter == 1:
            # zero gradient at a point that did not move and is its own best point: every later step
            # (and every reset to the best point) returns to it, so the image leaves the run
            # (up to float rounding of the projection: 1e-6 is far below any step that matters)
            same = ((new - xa).flatten(1).abs().amax(1) <= 1e-6) & ((new - x_best[act]).flatten(1).abs().amax(1) <= 1e-6)
            stuck[act[same & (grad_a.flatten(1).abs().amax(1) == 0) & ~ok]] = True
        halve = control.check(hist[: i + 2], i + 1, loss_best) & ~fooled & ~stuck
        if halve.any():
            step[halve] /= 2
            x[halve] = x_best[halve]
            grad[halve] = grad_best[halve]
    keep = ~fooled
    x_adv_out[keep] = x_best[keep]
    return x_adv_out, fooled, step.flatten() / max(eps, 1e-12)


class APGD(LpAttack):
    name = "apgd"

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        eot_iter: int = 1,
        target=None,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=target, seed=seed)
        for key, v in (("steps", steps), ("restarts", restarts), ("eot_iter", eot_iter)):
            if int(v) < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        if not 0 < float(rho) < 1:
            raise ConfigError(f"rho must be in (0, 1), got {rho}")
        self.steps, self.restarts, self.eot_iter, self.rho = int(steps), int(restarts), int(eot_iter), float(rho)
        self.loss = check_loss(loss)

    def params(self):
        p = {"norm": self.norm_name, "eps": self.eps, "loss": self.loss, "steps": self.steps, "restarts": self.restarts}
        if self.eot_iter > 1:
            p["eot_iter"] = self.eot_iter
        return p

    def _run(self, model, images, labels, targets, rng):
        if self.eps == 0:
            return images
        loss_fn = get_loss(self.loss)
        adv = images.clone()
        fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        step = torch.ones(len(images), device=images.device)
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().flatten()
            if len(idx) == 0:
                break
            t = targets[idx] if targets is not None else None
            x, ok, st = apgd_run(
                model,
                images[idx],
                labels[idx],
                t,
                t,
                loss_fn=loss_fn,
                norm=self.norm_name,
                eps=self.eps,
                steps=self.steps,
                rng=rng,
                idx=idx,
                rho=self.rho,
                eot_iter=self.eot_iter,
            )
            adv[idx] = x
            fooled[idx] = ok
            step[idx] = st
        return adv, {"step_size": step}
