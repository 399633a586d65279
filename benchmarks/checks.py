"""Gradient-masking checks, run on every run of a gradient attack.

A robustness number from a gradient attack is only an upper bound, and a loose one when the model
hides its gradients (Athalye, Carlini, Wagner 2018; Carlini et al. 2019, "On Evaluating Adversarial
Robustness", section 6 checklist; AutoAttack's own warnings). On a probe of the attacked images
(the first ``probe_n``, so a batch size does not change the answer) the runner checks:

- ``zero_grad``: the input gradient of the attack's loss is exactly zero for at least
  ``zero_grad_share`` of the images (rounding, logits so large that the softmax underflows);
- ``nonfinite_grad``: any input gradient holds a NaN or an infinity;
- ``saturated``: the log-probability gap between the top two classes exceeds ``saturation_gap``
  for at least ``saturation_share`` of the images (cross-entropy's gradient is then below
  ``exp(-gap)``: a scaled or overconfident model). An honest digits CNN's gaps stay under 30;
- ``random``: two forward passes of the same images give different logits;
- ``label_only``: the logits of at least ``label_only_share`` of the images are exactly the same
  after uniform noise of ``label_only_noise`` (Linf, about 8/255) that leaves their label as it
  was: the scores are piecewise constant (one-hot, a label-only API, rounded probabilities), so
  gradients and score-based searches see nothing to follow;
- ``unbounded``: the same attack with a budget covering the whole image box (Linf 1, L2
  ``sqrt(C*H*W)``, no random start) succeeds on fewer than ``unbounded_success`` of the images;
- ``blackbox``: Square (score-based, no gradients) at the same budget, ``square_queries`` queries,
  breaks more than ``blackbox_margin`` of the probe (at least 2 images) that the gradient attack
  left standing. On a model flagged ``random`` one draw decides nothing (Square stops at the first
  lucky draw), so there both attacks' images are judged by the majority of ``random_draws`` draws.

The first five need only the model and the probe; the last two need an iterative attack (``steps``
> 1: a single FGSM step is not expected to reach 100% nor to beat Square) of an Lp threat model
(:class:`~fragility.attacks.gradient.LpAttack`), rebuilt by the caller with other options. :func:`run_checks`
returns :class:`Flag` objects; :func:`format_flags` gives the store's ``flags`` column
(``zero_grad 64/64; saturated 64/64``). What answers each flag is in
:mod:`fragility.benchmarks.escalation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from fragility.errors import ConfigError

FLAG_NAMES = ("zero_grad", "nonfinite_grad", "saturated", "random", "label_only", "unbounded", "blackbox")


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the checks (the defaults keep an honest digits CNN and CIFAR ResNet clean)."""

    probe_n: int = 64
    zero_grad_share: float = 0.1
    saturation_gap: float = 50.0
    saturation_share: float = 0.5
    label_only_noise: float = 0.03
    label_only_share: float = 0.5
    unbounded_success: float = 0.9
    square_queries: int = 300
    blackbox_margin: float = 0.05
    random_draws: int = 9
    enabled: bool = True

    def __post_init__(self) -> None:
        if int(self.random_draws) < 1:
            raise ConfigError(f"checks.random_draws must be >= 1, got {self.random_draws}")

    @classmethod
    def from_config(cls, node: Any) -> CheckSettings:
        """From an optional ``checks:`` mapping of the run config (unknown keys are ignored)."""
        if not node:
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(node).items() if k in names})


@dataclass(frozen=True)
class Flag:
    """One fired check: its name, how many probe images showed it, and out of how many."""

    name: str
    count: int
    total: int

    def __str__(self) -> str:
        return f"{self.name} {self.count}/{self.total}"


def format_flags(flags: list[Flag]) -> str:
    return "; ".join(str(f) for f in flags)


def parse_flags(text: str) -> list[str]:
    """The flag names of a stored ``flags`` string."""
    return [part.split()[0] for part in (text or "").split(";") if part.strip()]


# the names run_checks can fire; a stored ``flags`` string also holds the clean pass's output flags
# and ``nonfinite_logits``, which no escalation answers
CHECK_NAMES = FLAG_NAMES


def check_names(text: str) -> list[str]:
    """The fired masking checks of a stored ``flags`` string (what an escalation answers)."""
    return [f for f in parse_flags(text) if f in CHECK_NAMES]


def _loss_fn(name: str):
    from fragility.attacks.losses import get_loss

    return get_loss(name or "ce")


def gradient_flags(
    model, images, labels, targets=None, loss: str = "ce", settings: CheckSettings = CheckSettings()
) -> list[Flag]:
    """``zero_grad`` / ``nonfinite_grad`` from one forward and backward pass of the attack's loss."""
    n = len(images)
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        values = _loss_fn(loss)(model(x), labels, targets)
        # an output built without autograd (argmax, one-hot labels, numpy inside forward) has no graph
        grad = torch.autograd.grad(values.sum(), x, allow_unused=True)[0] if values.requires_grad else None
    if grad is None:  # the output does not depend on the input at all, as far as autograd can see
        return [Flag("zero_grad", n, n)]
    flat = grad.detach().flatten(1)
    out = []
    finite = torch.isfinite(flat).all(1)
    if (~finite).any():
        out.append(Flag("nonfinite_grad", int((~finite).sum()), n))
    zero = finite & (flat.abs().amax(1) == 0)
    if n and zero.float().mean() >= settings.zero_grad_share:
        out.append(Flag("zero_grad", int(zero.sum()), n))
    return out


def outputs_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: two passes' logits differ beyond float rounding (a GPU kernel's noise is not randomness)."""
    return ~torch.isclose(a.float(), b.float(), rtol=1e-4, atol=1e-5).all(1)


@torch.no_grad()
def output_flags(model, images, settings: CheckSettings = CheckSettings()) -> list[Flag]:
    """``saturated``, ``random`` and ``label_only`` from three gradient-free forward passes."""
    n = len(images)
    a = model(images).float()
    b = model(images).float()
    # the same noise for every run (a generator of its own, on the CPU: the global streams are the run's)
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(images.shape, generator=g) * 2 - 1).to(images.device) * settings.label_only_noise
    c = model((images + noise).clamp(0, 1)).float()
    out = []
    logp = torch.log_softmax(a, 1)
    top2 = logp.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]  # +inf when the runner-up underflows to probability 0
    sat = gap > settings.saturation_gap
    if n and sat.float().mean() >= settings.saturation_share:
        out.append(Flag("saturated", int(sat.sum()), n))
    differ = outputs_differ(a, b)
    if differ.any():
        out.append(Flag("random", int(differ.sum()), n))
    # exactly equal, not close: an honest network's logits move with any change of its input
    frozen = (c == a).all(1) & (c.argmax(1) == a.argmax(1)) & ~differ
    if n and frozen.float().mean() >= settings.label_only_share:
        out.append(Flag("label_only", int(frozen.sum()), n))
    return out


def budget_flags(
    model,
    images,
    labels,
    success: torch.Tensor,
    make_attack: Callable[..., Any],
    *,
    targets=None,
    keys=None,
    norm: str,
    random: bool = False,
    settings: CheckSettings = CheckSettings(),
) -> list[Flag]:
    """``unbounded`` and ``blackbox``. ``make_attack(**overrides)`` builds the run's attack with
    other options (``eps``, ``random_start``); ``success`` is the gradient attack's per-image
    success on ``images``. ``random``: the model's outputs are random (the ``random`` flag), so
    ``blackbox`` compares the two attacks by :func:`majority_success`, the gradient attack run
    again on the probe for its images."""
    from fragility.attacks.square import Square

    n = len(images)
    out = []
    big = 1.0 if norm == "linf" else float(images[0].numel()) ** 0.5
    wide = make_attack(eps=big, random_start=False)
    res = wide(model, images, labels, targets=targets, keys=keys)
    ok = int(res.success.sum())
    if ok < settings.unbounded_success * n:
        out.append(Flag("unbounded", n - ok, n))
    same = make_attack()
    square = Square(eps=same.eps, norm=norm, queries=settings.square_queries, target=None, seed=same.seed)
    sq = square(model, images, labels, targets=targets, keys=keys)
    broken, square_broken = success.bool().cpu(), sq.success
    if random:
        mine = same(model, images, labels, targets=targets, keys=keys)
        broken = majority_success(model, mine.adv, labels, targets, settings.random_draws)
        square_broken = majority_success(model, sq.adv, labels, targets, settings.random_draws)
    beats = int((square_broken & ~broken).sum())
    if beats >= max(2, settings.blackbox_margin * n):
        out.append(Flag("blackbox", beats, n))
    return out


@torch.no_grad()
def majority_success(model, adv, labels, targets, draws: int) -> torch.Tensor:
    """Per image (on the CPU): the attack succeeds on more than half of ``draws`` forward passes of
    a randomized model (untargeted: the label changes; targeted: the target is predicted)."""
    device = labels.device
    adv = adv.to(device)
    wins = torch.zeros(len(adv), dtype=torch.long, device=device)
    for _ in range(draws):
        pred = model(adv).argmax(1)
        wins += (pred == targets) if targets is not None else (pred != labels)
    return (2 * wins > draws).cpu()


def run_checks(
    model,
    images,
    labels,
    success,
    *,
    attack,
    make_attack: Callable[..., Any] | None = None,
    targets=None,
    keys=None,
    settings: CheckSettings = CheckSettings(),
) -> list[Flag]:
    """Every check that applies to ``attack`` on the first ``settings.probe_n`` images, flags in
    :data:`FLAG_NAMES` order: all of them for a gradient attack, ``label_only`` alone for a
    score-based one, none for a decision-based one."""
    if not settings.enabled or len(images) == 0:
        return []
    k = settings.probe_n
    x, y = images[:k], labels[:k]
    if not getattr(attack, "needs_gradients", False):
        # a score-based search (Square, DE, Sparse-RS) is as blind as a gradient where the scores
        # do not move; a decision-based attack (RayS) reads only labels and needs no check
        if not getattr(attack, "reads_scores", True):
            return []
        return [f for f in output_flags(model, x, settings) if f.name == "label_only"]
    t = targets[:k] if targets is not None else None
    kk = keys[:k] if keys is not None else None
    flags = gradient_flags(model, x, y, t, getattr(attack, "loss", "ce"), settings)
    flags += output_flags(model, x, settings)
    iterative = int(getattr(attack, "steps", 1) or 1) > 1  # a single step (FGSM) is not expected to reach 100%
    if make_attack is not None and iterative and getattr(attack, "norm", None) in ("linf", "l2") and hasattr(attack, "eps"):
        random = any(f.name == "random" for f in flags)
        flags += budget_flags(
            model, x, y, success[:k], make_attack, targets=t, keys=kk, norm=attack.norm, random=random, settings=settings
        )
    order = {name: i for i, name in enumerate(FLAG_NAMES)}
    return sorted(flags, key=lambda f: order[f.name])
