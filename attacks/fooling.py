"""Fooling images: pictures no person would name that the network labels with near certainty.

Nguyen, Yosinski, Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions for
Unrecognizable Images", CVPR 2015 (the gradient-ascent variant, after Simonyan et al. 2014).
Starting from seeded uniform noise (or a constant image), ascend the log-probability of the target
class until it reaches ``confidence`` (default 0.9999) or ``steps`` run out. The dataset image
handed in only seeds the noise: its content is ignored. Unbounded (``norm = None``).

``target`` is one class (index or name), a list of classes, or ``"all"``; a list cycles over the
batch (``"all"``: sample i gets class i mod num_classes). Success means the target's probability
reached ``confidence`` (stricter than "target predicted"). Per-sample extras: ``target_conf``,
``steps``. ``prior`` optionally applies a preset's priors (``yosinski3``) while ascending.

Example::

    res = Fooling(target="all", steps=200)(model, images, labels)
    res.success.float().mean(), res.extras["steps"]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fragility.attacks.ascent import ascend, check_policy
from fragility.attacks.base import Attack
from fragility.attacks.priors import preset
from fragility.budget import parse_budget
from fragility.errors import ConfigError

INITS = ("noise", "constant")


class Fooling(Attack):
    name = "fooling"
    norm = None
    needs_gradients = True

    def __init__(
        self,
        *,
        target: int | str | list[int | str] = "all",
        confidence: float = 0.9999,
        steps: int = 200,
        step_size: float | str = 2 / 255,
        policy: str = "sign",
        init: str = "noise",
        init_value: float = 0.5,
        prior: str | None = None,
        seed: int = 0,
    ) -> None:
        if target is None:
            raise ConfigError("fooling needs a target: a class, a list of classes, or 'all'")
        targets = list(target) if isinstance(target, (list, tuple)) or _is_listconfig(target) else target
        if isinstance(targets, list) and not targets:
            raise ConfigError("fooling target list is empty")
        super().__init__(target=targets, seed=seed)
        if not 0.0 < float(confidence) < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
        step_size = parse_budget(step_size, "step_size")
        if int(steps) < 1 or step_size <= 0:
            raise ConfigError(f"steps and step_size must be positive, got steps={steps}, step_size={step_size}")
        if str(init) not in INITS:
            raise ConfigError(f"unknown init {init!r} (valid: {', '.join(INITS)})")
        self.confidence, self.steps, self.step_size = float(confidence), int(steps), float(step_size)
        self.policy = check_policy(policy)
        self.init, self.init_value = str(init), float(init_value)
        self.prior = None if prior in (None, "", "none") else preset(str(prior)).name

    def params(self) -> dict[str, Any]:
        t = self.target if not isinstance(self.target, list) else ",".join(map(str, self.target))
        p: dict[str, Any] = {"target": t, "conf": self.confidence, "steps": self.steps, "init": self.init}
        if self.prior:
            p["prior"] = self.prior
        return p

    def make_targets(self, model, labels):
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if isinstance(self.target, str) and self.target.lower() == "all":
            k = getattr(model, "num_classes", None)
            if k is None:
                raise ConfigError("target=all needs a model that knows its number of classes")
            classes = list(range(int(k)))
        else:
            items = self.target if isinstance(self.target, list) else [self.target]
            classes = [model.class_index(t) if hasattr(model, "class_index") else int(t) for t in items]
        cyc = torch.tensor(classes, dtype=torch.long)
        return cyc[torch.arange(len(labels)) % len(cyc)].to(labels.device)

    def _run(self, model, images, labels, targets, rng):
        if self.init == "noise":
            x0 = rng.uniform(*images.shape[1:]).to(images.device, images.dtype)
        else:
            x0 = torch.full_like(images, self.init_value).clamp(0, 1)
        # stop a hair above the threshold so the final (larger-batch) forward cannot land below it
        log_thr = math.log(self.confidence) + 1e-6

        def objective(x, idx):
            logp = F.log_softmax(model(x, idx=idx).float(), dim=1).gather(1, targets[idx, None]).squeeze(1)
            return logp, logp.detach() >= log_thr

        pre = preset(self.prior) if self.prior else None
        center = getattr(model, "mean", 0.5)
        out = ascend(
            objective,
            x0,
            steps=self.steps,
            lr=self.step_size,
            policy=self.policy,
            priors=pre.priors if pre else (),
            center=center,
            rng=rng,
        )
        with torch.no_grad():
            conf = torch.softmax(model(out.x).float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return out.x, {"target_conf": conf, "steps": out.steps}

    def is_success(self, probs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The target is predicted with at least ``confidence``."""
        conf = probs.gather(1, targets[:, None]).squeeze(1)
        return (probs.argmax(1) == targets) & (conf >= self.confidence)

    def extra_metrics(self, result) -> dict[str, Any]:
        steps = result.extras["steps"].float()
        ok = result.success
        per_class: dict[str, int] = {}
        if result.targets is not None:
            for t in result.targets.unique().tolist():
                m = result.targets == t
                per_class[str(t)] = int(steps[m & ok].max()) if bool((m & ok).any()) else -1
        return {
            "fooling_success_rate": float(ok.float().mean()) if len(ok) else math.nan,
            "mean_steps": float(steps[ok].mean()) if bool(ok.any()) else math.nan,
            "max_steps": int(steps[ok].max()) if bool(ok.any()) else -1,
            "mean_target_conf": float(result.extras["target_conf"].mean()) if len(ok) else math.nan,
            "max_steps_per_target": per_class,
        }


def _is_listconfig(v: Any) -> bool:
    try:
        from omegaconf import ListConfig
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, ListConfig)
