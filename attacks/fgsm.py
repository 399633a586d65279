"""Fast Gradient Sign Method.

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
One step of size ``eps`` along the sign of the loss gradient (Linf); with ``norm="l2"`` the step
follows the L2-normalized gradient instead (the fast gradient method).

Example::

    adv = FGSM(eps=8/255)(model, images, labels).adv
"""

from __future__ import annotations

from fragility.attacks.base import Attack
from fragility.attacks.budget import parse_budget
from fragility.attacks.gradient import ascent_step, check_norm, loss_gradient, project


class FGSM(Attack):
    name = "fgsm"

    def __init__(self, *, eps: float | str = 8 / 255, norm: str = "linf", target=None, seed: int = 0) -> None:
        super().__init__(target=target, seed=seed)
        self.eps = parse_budget(eps, "eps")
        self.norm_name = check_norm(norm)

    @property
    def norm(self) -> str:  # type: ignore[override]
        return self.norm_name

    @property
    def budget(self) -> float:
        return self.eps

    def params(self):
        return {"norm": self.norm_name, "eps": self.eps}

    def _run(self, model, images, labels, targets, rng):
        if self.eps == 0:
            return images
        grad = loss_gradient(model, images, labels, targets)
        return images + ascent_step(grad, self.norm_name, self.eps)

    def project(self, adv, images):
        return project(adv, images, self.norm_name, self.eps)
