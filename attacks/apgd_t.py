"""APGD-T: APGD with the targeted DLR loss, run against each of the top-k other classes in turn.

Croce & Hein, ICML 2020 (section 3 and the AutoAttack ensemble). For ``j = 2 .. k + 1`` the target
is the class with the ``j``-th largest logit on the clean image; APGD (:mod:`fragility.attacks.apgd`)
ascends the targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` on the images not
fooled yet. Success is untargeted (the label changed): the targets only steer the search, which
is why it finds adversarial images where the untargeted losses stall. ``k`` defaults to 9 (every
other class on CIFAR-10), capped at the number of classes minus one; the clean forward pass that
ranks the classes counts as one query. The targeted DLR needs four classes: on a model with two or
three, the targeted margin loss ``z_t - max_{j != t} z_j`` (Carlini & Wagner) takes its place, with
a warning. It does not saturate as cross-entropy does, and the signed (Linf) or normalized (L2)
steps and APGD's checkpoints do not depend on the loss's scale.

Example::

    res = APGDT(eps=8/255, n_target_classes=9, steps=100)(model, images, labels)
"""

from __future__ import annotations

import warnings

import torch

from fragility.attacks.apgd import apgd_run
from fragility.attacks.gradient import LpAttack, fewer_targets
from fragility.attacks.losses import dlr, margin
from fragility.errors import ConfigError


class APGDT(LpAttack):
    name = "apgd_t"

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        eot_iter: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=None, seed=seed)
        for key, v in (("steps", steps), ("restarts", restarts), ("n_target_classes", n_target_classes), ("eot_iter", eot_iter)):
            if int(v) < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        self.steps, self.restarts, self.eot_iter = int(steps), int(restarts), int(eot_iter)
        self.n_target_classes, self.rho = int(n_target_classes), float(rho)

    def params(self):
        p = {"norm": self.norm_name, "eps": self.eps, "steps": self.steps, "n_target_classes": self.n_target_classes}
        if self.restarts > 1:
            p["restarts"] = self.restarts
        if self.eot_iter > 1:
            p["eot_iter"] = self.eot_iter
        return p

    def fit_classes(self, num_classes):
        self.n_target_classes, notes = fewer_targets(self.name, self.n_target_classes, num_classes)
        return notes

    def _run(self, model, images, labels, targets, rng):
        if self.eps == 0:
            return images
        if targets is not None:
            raise ConfigError("apgd_t picks its own targets (the top-k classes); use apgd with target= for one target")
        with torch.no_grad():
            logits = model(images).float()
        c = logits.shape[1]
        loss_fn = dlr
        if c < 4:
            warnings.warn(few_classes_note(c), RuntimeWarning, stacklevel=2)
            loss_fn = margin
        ranked = logits.argsort(1, descending=True)
        adv = images.clone()
        fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        tried = torch.full((len(images),), -1, dtype=torch.long, device=images.device)
        for j in range(1, min(self.n_target_classes, c - 1) + 1):
            for _ in range(self.restarts):
                idx = (~fooled).nonzero().flatten()
                if len(idx) == 0:
                    return adv, {"target_rank": tried}
                x, ok, _ = apgd_run(
                    model,
                    images[idx],
                    labels[idx],
                    ranked[idx, j],
                    None,
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
                tried[idx[ok]] = j + 1
        return adv, {"target_rank": tried}


def few_classes_note(c: int) -> str:
    return f"apgd_t: the model has {c} classes and targeted DLR needs 4; the targeted margin loss is used instead"
