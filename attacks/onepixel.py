"""One-pixel attack (L0, black box: reads only the model's probabilities).

Su, Vargas, Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE TEVC 2019.
Each candidate sets ``pixels`` pixels, ``k x (row, col, r, g, b)``; differential evolution
(DE/rand/1, F = 0.5, no crossover; positions uniform and colours Gaussian N(0.5, 0.5) clipped to
[0, 1] at start) minimizes the true class's probability (untargeted) or maximizes the target's
(compared as log-probabilities, which orders candidates the same way without rounding to 1.0).
An image stops at the first generation in which one of its candidates is misclassified (or
classified as the target); its queries are the candidates it sent through the model.

Batched: one generation evaluates the candidates of every unfinished image in the batch in model
calls of up to ``max_batch`` images, and finished images drop out. ``precision="bf16"`` runs the
candidate forwards under bfloat16 autocast (several times faster on CPUs with AVX-512 BF16 and on
GPUs) and re-checks every apparent success in float32 before the image stops, so success means
the same as with ``"fp32"``.

Example::

    res = OnePixel(pixels=1, popsize=400, maxiter=100)(model, images, labels)
    res.success.float().mean(), res.extras["positions"], res.extras["new"]
"""

from __future__ import annotations

from typing import Any

import torch

from fragility.attacks.base import Attack, other_class_targets
from fragility.attacks.differential_evolution import as_mutation, check_settings, evolve
from fragility.errors import ConfigError
from fragility.flags import parse_flag
from fragility.precision import check_precision, warn_if_emulated

LOSSES = ("prob", "margin")


class OnePixel(Attack):
    name = "onepixel"
    norm = "l0"
    needs_gradients = False

    def __init__(
        self,
        *,
        pixels: int = 1,
        popsize: int = 400,
        maxiter: int = 100,
        mutation: float | tuple[float, float] = 0.5,
        crossover: float = 1.0,
        strategy: str = "rand1",
        max_batch: int = 1024,
        precision: str = "fp32",
        fold_bn: bool = True,
        loss: str = "prob",
        targeted: bool = False,
        target: int | str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(target=target, seed=seed)
        if int(pixels) < 1:
            raise ConfigError(f"pixels must be >= 1, got {pixels}")
        if int(max_batch) < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        check_precision(precision)
        mutation = as_mutation(mutation)
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        check_settings(int(popsize), int(maxiter), mutation, float(crossover), strategy)
        self.pixels, self.popsize, self.maxiter = int(pixels), int(popsize), int(maxiter)
        self.mutation, self.crossover, self.strategy = mutation, float(crossover), strategy
        self.max_batch, self.precision, self.fold_bn = int(max_batch), precision, parse_flag(fold_bn, "fold_bn")
        self.want_targeted = parse_flag(targeted, "targeted") or target is not None

    @property
    def targeted(self) -> bool:
        return self.want_targeted

    @property
    def budget(self) -> float:
        return float(self.pixels)

    def params(self) -> dict[str, Any]:
        p = {"pixels": self.pixels, "popsize": self.popsize, "maxiter": self.maxiter}
        if (self.mutation, self.crossover, self.strategy) != (0.5, 1.0, "rand1"):
            f = self.mutation
            p.update(F=f if isinstance(f, float) else f"U[{f[0]:g},{f[1]:g})", CR=self.crossover, strategy=self.strategy)
        if self.loss != "prob":
            p["loss"] = self.loss
        if self.precision != "fp32":
            p["precision"] = self.precision
        if not self.fold_bn:
            p["fold_bn"] = False
        if self.want_targeted:
            p["target"] = "other" if self.target is None else self.target
        return p

    def make_targets(self, model, labels):
        """``target`` given: that class. ``targeted`` alone: for each image the class
        ``(label + 1 + seed mod (C - 1)) mod C``, a fixed, seed-dependent other class."""
        if self.target is not None or not self.want_targeted:
            return super().make_targets(model, labels)
        return other_class_targets(model, labels, self.seed)

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Keep the ``pixels`` most changed pixels of each image and restore all others."""
        n, _c, h, w = images.shape
        change = (adv - images).abs().amax(1).flatten(1)  # (N, H*W)
        keep = torch.zeros_like(change, dtype=torch.bool)
        keep.scatter_(1, change.topk(min(self.pixels, h * w), dim=1).indices, True)
        keep &= change > 0
        return torch.where(keep.view(n, 1, h, w), adv, images)

    # ---- the attack --------------------------------------------------------------------------
    def _run(self, model, images, labels, targets, rng):
        n, c, h, w = images.shape
        if self.pixels > h * w:  # refused, not clamped: the record would name a budget never run
            raise ConfigError(f"pixels={self.pixels} is more than the {h * w} pixels of each {h}x{w} image")
        warn_if_emulated(self.precision, images.device)
        k, pop = self.pixels, self.popsize
        goal = targets if targets is not None else labels
        hw = torch.tensor([h, w], dtype=torch.float32, device=images.device)
        autocast = self.precision == "bf16"
        # candidates through the model's BatchNorm-folded copy where it has one (models/fold.py: the
        # same logits to float rounding, 1.2-1.3x faster on resnet20); like bf16, an apparent success
        # is then confirmed on the model itself in float32
        fast = self.fold_bn and model.has_folded_copy

        def forward(x: torch.Tensor, owner: torch.Tensor, candidate: bool) -> torch.Tensor:
            # candidate=False: the float32 confirmation on the model itself
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=candidate and autocast):
                # log-probabilities: DE only compares fitness values, so this is the same search as on
                # probabilities, but a confident image's p_true = 1 - 1e-9 no longer rounds to 1.0,
                # which would make every candidate tie and stall the search
                return torch.log_softmax(model(x, idx=owner, inference=candidate and fast).float(), dim=1)

        def objective(cand: torch.Tensor, idx: torch.Tensor):
            m = cand.shape[0] * cand.shape[1]
            flat = cand.reshape(m, k, 2 + c)
            owner = idx.repeat_interleave(cand.shape[1])
            fit = torch.empty(m, device=images.device)
            ok = torch.empty(m, dtype=torch.bool, device=images.device)
            for s in range(0, m, self.max_batch):
                o = owner[s : s + self.max_batch]
                logp = forward(paint(images, o, flat[s : s + self.max_batch]), o, True)
                fit[s : s + self.max_batch], ok[s : s + self.max_batch] = self._score(
                    logp, goal[o], targets is not None, self.loss
                )
            fit, ok = fit.view(cand.shape[:2]), ok.view(cand.shape[:2])
            if (autocast or fast) and ok.any():
                ok = confirm(cand, idx, fit, ok)
            return fit, ok

        def confirm(cand, idx, fit, ok):
            # bf16 or the folded copy says some candidates succeed: re-check each such image's best one in float32
            # (one more query each). Only a confirmed candidate counts as a success; an image
            # whose best apparent success fails in float32 keeps searching.
            rows = ok.any(1).nonzero().flatten()
            j = torch.where(ok[rows], fit[rows], torch.inf).argmin(1)
            o = idx[rows]
            _, good = self._score(
                forward(paint(images, o, cand[rows, j].view(len(rows), k, 2 + c)), o, False),
                goal[o],
                targets is not None,
                self.loss,
            )
            out = torch.zeros_like(ok)
            out[rows[good], j[good]] = True
            return out

        def repair(trial: torch.Tensor, idx: torch.Tensor, rng_) -> torch.Tensor:
            # positions that left the image are redrawn uniformly (as SciPy's DE does);
            # colours are clipped, so the extreme colours the attack favours stay reachable
            t = trial.view(*trial.shape[:2], k, 2 + c)
            fresh = rng_.uniform(pop, k, 2, idx=idx) * hw
            pos = t[..., :2]
            pos = torch.where((pos < 0) | (pos >= hw), fresh, pos)
            return torch.cat([pos, t[..., 2:].clamp(0, 1)], dim=-1).view_as(trial)

        idx = torch.arange(n, device=images.device)
        with torch.inference_mode():
            pos0 = rng.uniform(pop, k, 2, idx=idx) * hw  # uniform positions
            col0 = (0.5 + 0.5 * rng.normal(pop, k, c, idx=idx)).clamp(0, 1)  # Gaussian colours
            init = torch.cat([pos0, col0], dim=-1).view(n, pop, k * (2 + c))
            res = evolve(
                objective,
                init,
                rng,
                idx,
                maxiter=self.maxiter,
                mutation=self.mutation,
                crossover=self.crossover,
                strategy=self.strategy,
                repair=repair,
            )
            best = res.x.view(n, k, 2 + c)
            adv = paint(images, idx, best)
            rows, cols = _positions(best, h, w)
            old = images.permute(0, 2, 3, 1)[idx[:, None], rows, cols]
        extras = {
            "positions": torch.stack([rows, cols], -1).clone(),  # (N, k, 2) row, col
            "old": old.clone(),  # (N, k, C) colours before
            "new": best[..., 2:].clone(),  # (N, k, C) colours written
            "generations": res.generations.clone(),  # (N,) generation that succeeded, else maxiter
            "fitness": res.fitness.clone(),  # (N,) best true-class (or minus target) log-probability
        }
        return adv.clone(), extras

    @staticmethod
    def _score(logp: torch.Tensor, goal: torch.Tensor, targeted: bool, loss: str = "prob") -> tuple[torch.Tensor, torch.Tensor]:
        p = logp.gather(1, goal[:, None]).squeeze(1)
        pred = logp.argmax(1)
        if loss == "margin":  # goal's log-probability against the best other class's
            other = logp.scatter(1, goal[:, None], -torch.inf).amax(1)
            p = p - other
        return (-p, pred == goal) if targeted else (p, pred != goal)

    # ---- hooks for the runner -------------------------------------------------------------------
    def extra_metrics(self, result) -> dict[str, Any]:
        gens = result.extras.get("generations")
        if gens is None or len(gens) == 0:
            return {}
        ok = result.success
        out = {"mean_generations": float(gens.float().mean())}
        if ok.any():
            out["mean_generations_success"] = float(gens[ok].float().mean())
            out["mean_queries_success"] = float(result.queries[ok].float().mean())
        return out


def _positions(cand: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (row, col) of candidates (..., k, 2 + C)."""
    rows = cand[..., 0].long().clamp(0, h - 1)
    cols = cand[..., 1].long().clamp(0, w - 1)
    return rows, cols


def paint(images: torch.Tensor, owner: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Copies of ``images[owner]`` with each row's k pixels set: ``cand`` (m, k, 2 + C)."""
    x = images.index_select(0, owner)
    rows, cols = _positions(cand, x.shape[2], x.shape[3])
    x.permute(0, 2, 3, 1)[torch.arange(len(x), device=x.device)[:, None], rows, cols] = cand[..., 2:].to(x.dtype)
    return x
