"""The attack contract.

``attack(model, images, labels, *, targets=None, keys=None) -> AttackResult``

An attack is configured in its constructor (typed keyword-only hyperparameters, so a Hydra config
instantiates it without a model) and receives the model at call time. :meth:`Attack.__call__` is
final: it validates input, puts the model in eval mode (restored afterwards, also on error),
counts queries through one wrapper, clips the result to the threat model and to [0, 1], and
computes success and confidences itself. A subclass only implements :meth:`Attack._run` (and
:meth:`Attack.project` when it has a budget).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import nn

from fragility.budget import format_number
from fragility.errors import ConfigError, InputError
from fragility.models.fold import folded_copy
from fragility.models.wrapper import eval_mode
from fragility.rng import SampleRNG, content_keys


@dataclass
class AttackResult:
    """Adversarial images plus per-sample facts (all tensors of length N, on the CPU)."""

    adv: torch.Tensor  # (N, C, H, W) in [0, 1]
    success: torch.Tensor  # bool: untargeted -> label changed; targeted -> target predicted
    queries: torch.Tensor  # int64: model forward passes spent on each sample by the attack
    pred: torch.Tensor  # int64: predicted class of adv
    pred_conf: torch.Tensor  # probability of the predicted class
    true_conf: torch.Tensor  # probability of the true class
    targets: torch.Tensor | None = None  # int64 targets, for targeted attacks
    extras: dict[str, Any] = field(default_factory=dict)  # attack-specific per-sample facts

    def __len__(self) -> int:
        return len(self.success)

    @staticmethod
    def concat(parts: list[AttackResult]) -> AttackResult:
        """Join the results of consecutive batches."""
        cat = lambda xs: torch.cat(xs) if xs[0] is not None else None
        extras = {}
        for k, v in parts[0].extras.items():
            extras[k] = torch.cat([p.extras[k] for p in parts]) if torch.is_tensor(v) else [p.extras[k] for p in parts]
        return AttackResult(
            adv=cat([p.adv for p in parts]),
            success=cat([p.success for p in parts]),
            queries=cat([p.queries for p in parts]),
            pred=cat([p.pred for p in parts]),
            pred_conf=cat([p.pred_conf for p in parts]),
            true_conf=cat([p.true_conf for p in parts]),
            targets=cat([p.targets for p in parts]) if parts[0].targets is not None else None,
            extras=extras,
        )


class QueryCounter(nn.Module):
    """Wraps the model and counts forward passes per sample of the attacked batch.

    An attack that evaluates a subset or many candidates per image passes ``idx``: for each row of
    ``x``, the index of the batch sample it belongs to. A model that runs its network several
    times per image in one call (EOT, randomized smoothing) sets ``last_passes`` to that number
    (read from the instance, never inherited), and each call counts that many queries.

    ``inference=True`` is for score-only queries under ``torch.no_grad()``: they may run through the
    model's folded copy (:func:`fragility.models.fold.folded_copy`, BatchNorm folded into the
    convolutions; ``has_folded_copy`` says whether there is one), which gives the same logits to
    float rounding. They count the same. An attack that stops an image on such logits confirms the
    success on the model itself.
    """

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model = model
        self.counts = torch.zeros(n, dtype=torch.long)
        self.training = False  # its own flag only; the model's modes are owned by eval_mode()
        self._folded: list[nn.Module | None] = []  # built on the first inference query (a list: not a submodule)

    @property
    def has_folded_copy(self) -> bool:
        return self._folded_copy() is not None

    def _folded_copy(self) -> nn.Module | None:
        if not self._folded:
            self._folded.append(folded_copy(self.model))
        return self._folded[0]

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, *, inference: bool = False) -> torch.Tensor:
        if idx is None and x.shape[0] != len(self.counts):
            raise RuntimeError("QueryCounter: pass idx= when the batch is not the attacked batch")
        fast = self._folded_copy() if inference and not torch.is_grad_enabled() else None
        out = (fast if fast is not None else self.model)(x)
        # a wrapper that runs the network several times per image (EOT draws, a smoothed
        # classifier's votes) says how many in ``last_passes``: a query is one real forward pass
        mult = int(self.model.__dict__.get("last_passes", 1))
        if idx is None:
            self.counts += mult
        else:
            self.counts += mult * torch.bincount(idx.detach().cpu().long(), minlength=len(self.counts))
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


class Attack(ABC):
    """Base class of every attack. Subclasses set ``name``/``norm`` and implement ``_run``."""

    name: ClassVar[str] = "attack"
    #: the threat model's norm: "linf", "l2", "l0", "patch" or None (unbounded, e.g. fooling images)
    norm: ClassVar[str | None] = None
    #: what the attack needs from the model (checked before any compute is spent)
    needs_gradients: ClassVar[bool] = True
    #: whether it follows the model's scores (False: a decision-based attack, which reads only the
    #: predicted class and so needs no score that moves)
    reads_scores: ClassVar[bool] = True
    #: names of 1-D per-sample tensors in ``AttackResult.extras`` that the runner stores with each
    #: sample (e.g. which attack of an ensemble broke it)
    sample_extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, target: int | str | None = None, seed: int = 0) -> None:
        self.target = target
        self.seed = int(seed)

    # ---- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _run(
        self, model: QueryCounter, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, rng: SampleRNG
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return adversarial images (and optionally a dict of per-sample extras)."""

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Project ``adv`` onto the threat model around ``images`` (default: no budget)."""
        return adv

    @property
    def budget(self) -> float | None:
        """The size of the threat model in the units of ``norm`` (None when unbounded)."""
        return None

    def params(self) -> dict[str, Any]:
        """Hyperparameters that identify this attack in a leaderboard row."""
        return {}

    def fit_classes(self, num_classes: int) -> list[str]:
        """Fit settings that depend on the model's class count (``n_target_classes`` above the
        ``num_classes - 1`` other classes) before a run, so that :meth:`params` names what runs;
        one line per setting changed. The default has none."""
        return []

    def describe(self) -> str:
        parts = []
        for k, v in self.params().items():
            parts.append(f"{k}={format_number(v) if isinstance(v, float) else v}")
        return " ".join(parts)

    def is_success(self, probs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The success criterion, judged on the class probabilities of the final (projected,
        clipped) images: untargeted, the label changed; targeted, the target is predicted. An
        attack with a stricter criterion (a confidence threshold) overrides this."""
        pred = probs.argmax(1)
        return pred == targets if targets is not None else pred != labels

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def make_targets(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor | None:
        """Per-sample targets for ``labels`` from the configured ``target`` (None: untargeted).
        Attacks with several targets (a list, ``all``) override this."""
        if self.target is None:
            return None
        idx = model.class_index(self.target) if hasattr(model, "class_index") else int(self.target)
        return torch.full_like(torch.as_tensor(labels, dtype=torch.long), idx)

    # ---- the final call --------------------------------------------------------------------
    @final
    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> AttackResult:
        device = _model_device(model)
        images, labels = self._validate(model, images, labels)
        images, labels = images.to(device), labels.to(device)
        if targets is None:
            targets = self.make_targets(model, labels)
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
            if len(targets) != len(labels):
                raise InputError(f"{len(targets)} targets for {len(labels)} images")
        rng = SampleRNG(keys.to(device) if keys is not None else content_keys(images, self.seed))
        counter = QueryCounter(model, len(images))
        with eval_mode(model):
            out = self._run(counter, images, labels, targets, rng)
            adv, extras = out if isinstance(out, tuple) else (out, {})
            adv = self.project(adv.detach(), images).clamp(0.0, 1.0)
            with torch.inference_mode():
                probs = torch.softmax(model(adv).float(), dim=1)
        pred_conf, pred = probs.max(dim=1)
        true_conf = probs.gather(1, labels[:, None]).squeeze(1)
        success = self.is_success(probs, labels, targets)
        # non-finite logits on an adversarial image say nothing: a failed attack, flagged, never a number
        nonfinite = ~torch.isfinite(probs).all(dim=1)
        if nonfinite.any():
            success = success & ~nonfinite
            pred_conf, true_conf = pred_conf.masked_fill(nonfinite, float("nan")), true_conf.masked_fill(nonfinite, float("nan"))
        extras = {**extras, "nonfinite_logits": nonfinite}
        cpu = lambda t: t.detach().cpu()
        return AttackResult(
            adv=cpu(adv),
            success=cpu(success),
            queries=counter.counts.clone(),
            pred=cpu(pred),
            pred_conf=cpu(pred_conf),
            true_conf=cpu(true_conf),
            targets=cpu(targets) if targets is not None else None,
            extras={k: cpu(v) if torch.is_tensor(v) else v for k, v in extras.items()},
        )

    def _validate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(model, "check_images"):
            model.check_images(images)
        elif not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise InputError("images must be a float NCHW tensor")
        if images.numel() and not bool(torch.isfinite(images).all()):  # NaN passes every range comparison
            bad = int((~torch.isfinite(images)).sum())
            raise InputError(f"images contain NaN or Inf values ({bad} of {images.numel()})")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise InputError("images must lie in [0, 1] (normalization belongs to the model wrapper)")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(images):
            raise InputError(f"{len(labels)} labels for {len(images)} images")
        n_classes = getattr(model, "num_classes", None)
        if len(labels) and (int(labels.min()) < 0 or (isinstance(n_classes, int) and int(labels.max()) >= n_classes)):
            low, high = int(labels.min()), int(labels.max())
            where = f"in [0, {n_classes})" if isinstance(n_classes, int) else ">= 0"
            raise InputError(f"labels must be class indices {where}, got {low if low < 0 else high}")
        if self.needs_gradients and not getattr(model, "differentiable", True):
            raise ConfigError(f"{self.name} needs gradients, but the model declares it is not differentiable")
        return images.float(), labels


def other_class_targets(model: nn.Module, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """For attacks with ``targeted=true`` and no ``target``: for each image the class
    ``(label + 1 + seed mod (C - 1)) mod C``, a fixed, seed-dependent other class."""
    c = getattr(model, "num_classes", None)
    if c is None or c < 2:
        raise ConfigError("targeted=true without target needs a model with num_classes >= 2")
    labels = torch.as_tensor(labels, dtype=torch.long)
    return (labels + 1 + seed % (c - 1)) % c


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters())[:1] + list(model.buffers())[:1]:
        return t.device
    return torch.device("cpu")
