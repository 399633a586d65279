"""Fast Gradient Sign Method.

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
One step of size ``eps`` along the sign of the loss gradient (Linf); with ``norm="l2"`` the step
follows the L2-normalized gradient instead (the fast gradient method). ``loss`` picks the objective:
``ce`` (default), ``margin`` or ``dlr`` (:mod:`fragility.attacks.losses`; the last two do not
saturate when the model's logits are large).

Example::

    adv = FGSM(eps=8/255)(model, images, labels).adv
"""

from __future__ import annotations

from fragility.attacks.gradient import LpAttack, ascent_step, check_loss, loss_gradient


class FGSM(LpAttack):
    name = "fgsm"

    def __init__(self, *, eps: float | str = 8 / 255, norm: str = "linf", loss: str = "ce", target=None, seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, target=target, seed=seed)
        self.loss = check_loss(loss)

    def params(self):
        p = super().params()
        if self.loss != "ce":  # the default keeps the leaderboard rows of earlier runs unchanged
            p["loss"] = self.loss
        return p

    def _run(self, model, images, labels, targets, rng):
        if self.eps == 0:
            return images
        grad = loss_gradient(model, images, labels, targets, self.loss)
        return images + ascent_step(grad, self.norm_name, self.eps)
