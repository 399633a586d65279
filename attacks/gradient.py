"""Shared pieces of the gradient attacks: the loss gradient and the Linf / L2 geometry.

Each norm supplies a random start, a normalized ascent step and a projection; FGSM and PGD
are then a few lines each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fragility.attacks.base import Attack
from fragility.attacks.losses import LossFn, get_loss
from fragility.budget import parse_budget
from fragility.errors import ConfigError
from fragility.rng import SampleRNG

NORMS = ("linf", "l2")


def check_loss(loss: str) -> str:
    """Validate a ``loss=`` option (``ce``, ``margin``, ``dlr``); returns it lower-cased."""
    get_loss(loss)
    return str(loss).lower()


def check_norm(norm: str) -> str:
    norm = str(norm).lower()
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r} (valid: {', '.join(NORMS)})")
    return norm


def loss_gradient(model, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, loss: str = "ce") -> torch.Tensor:
    """Gradient of the attack objective w.r.t. ``x``: ascend cross-entropy on the label, or
    descend it on the target (``loss="ce"``, the default), or ascend the margin / DLR loss of
    :mod:`fragility.attacks.losses`. Only the input gradient is computed (no weight gradients)."""
    if loss != "ce":
        return loss_and_gradient(model, x, labels, targets, get_loss(loss))[1]
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if targets is None:
        value = F.cross_entropy(logits, labels, reduction="sum")
    else:
        value = -F.cross_entropy(logits, targets, reduction="sum")
    return input_gradient(value, x)


def input_gradient(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d value / d x; zeros when the model's output does not depend on its input at all (a
    constant model), instead of autograd's error: no gradient step can move it."""
    if not value.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def loss_and_gradient(
    model, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, loss_fn: LossFn, idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss (to ascend), its input gradient and the logits, from one forward and one
    backward pass. ``idx`` is passed to the query counter when ``x`` is a subset of the batch."""
    x = x.detach().requires_grad_(True)
    logits = model(x) if idx is None else model(x, idx=idx)
    values = loss_fn(logits, labels, targets)
    return values.detach(), input_gradient(values.sum(), x), logits.detach()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def ascent_step(grad: torch.Tensor, norm: str, step: float) -> torch.Tensor:
    if norm == "linf":
        return step * grad.sign()
    return step * grad / _flat_norm(grad)


def project(adv: torch.Tensor, images: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``adv`` moved into the ``norm`` ball of radius ``eps`` around ``images``, exactly: the
    distance measured in float64 on the returned float values never exceeds ``eps``."""
    delta = adv - images
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    return _inside(images + delta, images, norm, eps)


def _inside(adv: torch.Tensor, images: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``images + delta`` in float32 (and ``eps`` itself rounded to float32) can land outside the
    ball by up to ~4e-8 at eps=8/255; move those values back, measured in float64, until none is.
    Clipping to [0, 1] afterwards only moves values toward ``images``, so it keeps this bound."""
    for i in range(8):
        d = adv.double() - images.double()
        if norm == "linf":
            over = d.abs() > eps
            if not over.any():
                break
            # first the boundary value rounded to the nearest float, then one ulp toward images
            fixed = (images.double() + d.clamp(-eps, eps)).to(adv.dtype) if i == 0 else torch.nextafter(adv, images)
            adv = torch.where(over, fixed, adv)
        else:
            n = d.flatten(1).norm(dim=1)
            over = n > eps
            if not over.any():
                break
            shrink = ((eps / n).clamp(max=1.0) * (1 - 1e-6)).view(-1, *([1] * (adv.dim() - 1)))
            adv = torch.where(over.view_as(shrink), images + ((adv - images).double() * shrink).to(adv.dtype), adv)
    return adv


def random_start(images: torch.Tensor, norm: str, eps: float, rng: SampleRNG) -> torch.Tensor:
    shape = images.shape[1:]
    if norm == "linf":
        delta = (2 * rng.uniform(*shape) - 1) * eps
    else:  # uniform in the L2 ball: Gaussian direction, radius ~ U^(1/d)
        d = rng.normal(*shape)
        r = rng.uniform(1).view(-1, *([1] * len(shape))) ** (1.0 / images[0].numel())
        delta = d / _flat_norm(d) * r * eps
    return (images + delta.to(images.device, images.dtype)).clamp(0, 1)


class LpAttack(Attack):
    """An attack bounded by an Linf or L2 ball of radius ``eps`` around each image."""

    def __init__(self, *, eps: float | str, norm: str, target=None, seed: int = 0) -> None:
        super().__init__(target=target, seed=seed)
        self.eps = parse_budget(eps, "eps")
        self.norm_name = check_norm(norm)
        if self.norm_name == "linf" and self.eps > 1:
            # pixels lie in [0, 1]: eps = 1 already allows any image, so a larger value is a typo,
            # most often a pixel count meant as k/255
            raise ConfigError(
                f"eps={eps} is more than 1, the whole [0, 1] pixel range, for an Linf budget (8 pixel levels is eps=8/255)"
            )

    @property
    def norm(self) -> str:  # type: ignore[override]
        return self.norm_name

    @property
    def budget(self) -> float:
        return self.eps

    def params(self):
        return {"norm": self.norm_name, "eps": self.eps}

    def project(self, adv, images):
        return project(adv, images, self.norm_name, self.eps)


def fewer_targets(name: str, k: int, num_classes: int) -> tuple[int, list[str]]:
    """``n_target_classes`` for a model with ``num_classes`` outputs: at most the other classes."""
    if num_classes < 2 or k <= num_classes - 1:
        return k, []
    note = f"{name}: n_target_classes={k} but the model has {num_classes} classes; its {num_classes - 1} other classes are the targets"
    return num_classes - 1, [note]
