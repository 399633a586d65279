"""The defense contract: ``defense.wrap(model) -> DefendedClassifier``.

A defense is configured in its constructor (typed keyword-only arguments, so a Hydra config
instantiates it without a model) and wraps any [0, 1] NCHW classifier into another one: every
attack still sees ``model(images) -> logits`` with the same ``input_size``, ``class_names`` and
``name``, and defenses compose (``jpeg.wrap(median.wrap(model))``).

Most defenses here are an input transformation ``T`` in front of the model. Two flags say how
an honest evaluation must attack them (Athalye, Carlini, Wagner, "Obfuscated Gradients Give a
False Sense of Security", ICML 2018):

- ``differentiable = False``: ``T`` has no useful gradient (JPEG, bit-depth reduction: piecewise
  constant, derivative 0 almost everywhere; the median filter passes gradient to one pixel per
  window). The adaptive attack uses BPDA: ``T`` in the forward pass, identity in the backward pass.
- ``randomized = True``: ``T`` draws noise. The adaptive attack uses EOT: the wrapper returns
  ``log(mean_k softmax(model(T_k(x))))`` over ``eot_samples`` draws, whose gradient averages
  the per-draw gradients of the expected probability.

``DefendedClassifier.adaptive`` switches between the two forms: ``False`` (the "standard"
variant: the attack differentiates the defense exactly as implemented) and ``True`` (BPDA/EOT).
Without gradients (clean accuracy, final success check, score-based attacks) the wrapper always
answers with the deployed defense: one transform (one noise draw), no surrogate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from fragility.budget import format_number
from fragility.errors import ConfigError
from fragility.flags import parse_flag


def bpda(x: torch.Tensor, transformed: torch.Tensor, approximation: torch.Tensor | None = None) -> torch.Tensor:
    """Backward Pass Differentiable Approximation: the value of ``transformed``, the gradient of
    ``approximation`` (a differentiable g(x) ~ T(x); the identity, i.e. straight-through, by default)."""
    g = x if approximation is None else approximation
    return g + (transformed - g).detach()


class Defense:
    """Base class: subclasses set ``name`` and flags and implement ``transform`` (an input
    transformation) and/or override ``wrap``."""

    name: ClassVar[str] = "defense"
    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    def __init__(self, *, adaptive: bool = True, eot_samples: int = 8, seed: int = 0) -> None:
        if int(eot_samples) < 1:
            raise ConfigError(f"eot_samples must be >= 1, got {eot_samples}")
        self.adaptive = parse_flag(adaptive, "adaptive")
        self.eot_samples = int(eot_samples)
        self.seed = int(seed)

    # ---- what subclasses provide -------------------------------------------------------------
    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The defense's preprocessing of [0, 1] images (identity by default)."""
        return x

    def params(self) -> dict[str, Any]:
        return {}

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        """BPDA's differentiable stand-in g(x) ~ transform(x) for the backward pass (Athalye et al.
        2018). The identity by default; a defense with a better differentiable form overrides it."""
        return x

    # ---- derived ------------------------------------------------------------------------------
    @property
    def needs_adaptive(self) -> bool:
        """Whether the runner must also score the adaptive (BPDA/EOT) variant."""
        return self.adaptive and (not self.differentiable or self.randomized)

    def label(self) -> str:
        """``jpeg(quality=75)``: the defense column of a leaderboard row."""
        p = ",".join(f"{k}={format_number(v) if isinstance(v, float) else v}" for k, v in self.params().items())
        return f"{self.name}({p})" if p else self.name

    def adaptive_description(self) -> str:
        parts = []
        if not self.differentiable:
            parts.append("BPDA")
        if self.randomized:
            parts.append(f"EOT-{self.eot_samples}")
        return "+".join(parts) or "none"

    def wrap(self, model: nn.Module) -> DefendedClassifier:
        return DefendedClassifier(model, self)


class DefendedClassifier(nn.Module):
    """``model`` behind ``defense``; a drop-in :class:`~fragility.models.wrapper.Classifier`."""

    def __init__(self, model: nn.Module, defense: Defense) -> None:
        super().__init__()
        self.model = model
        self.defense = defense
        self.adaptive = False
        self.input_size = tuple(model.input_size)
        self.class_names = list(model.class_names)
        self.name = str(model.name)
        self._gen: torch.Generator | None = None
        self._stream = 0  # mixed into the defense's seed by reseed(): one stream per run
        #: network forward passes per input image in the last call (EOT draws, votes), read by the
        #: attacks' query counter so that ``queries`` counts real passes, not calls
        self.last_passes = 1
        self.eval()

    # Attribute access falls back to the wrapped classifier (mean, std, net, ...), like Classifier.
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        for t in list(self.model.parameters())[:1] + list(self.model.buffers())[:1]:
            return t.device
        return torch.device("cpu")

    def check_images(self, images: torch.Tensor) -> None:
        self.model.check_images(images)

    def class_index(self, target: int | str) -> int:
        return self.model.class_index(target)

    def generator(self, device: torch.device) -> torch.Generator:
        """The defense's own random stream (seeded once; independent of the global RNG)."""
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed((self.defense.seed + self._stream) % 2**63)
        return self._gen

    def reseed(self, stream: int) -> None:
        """Start the defense's stream afresh for ``stream`` (a run's own number): the draws of a run
        then do not depend on what ran before it in the process."""
        self._stream, self._gen = int(stream), None

    def rng_state(self) -> torch.Tensor | None:
        """The state of the defense's own stream, None before its first draw (a resumed run puts
        it back, so that its later batches see the draws an uninterrupted run's did)."""
        return None if self._gen is None else self._gen.get_state()

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        self.generator(device).set_state(state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        d = self.defense
        g = self.generator(images.device) if d.randomized else None
        if not (self.adaptive and torch.is_grad_enabled() and images.requires_grad):
            out = self.model(d.transform(images, g))
            self.last_passes = passes(self.model)
            return out
        k = self.eot_samples_now()
        x = images.repeat(k, *([1] * (images.dim() - 1))) if k > 1 else images
        t = d.transform(x, g)
        if not d.differentiable:
            t = bpda(x, t, d.approximation(x))
        logits = self.model(t)
        self.last_passes = k * passes(self.model)
        if k == 1:
            return logits
        logp = torch.log_softmax(logits.float(), 1).view(k, len(images), -1)
        return torch.logsumexp(logp, 0) - math.log(k)

    def eot_samples_now(self) -> int:
        return self.defense.eot_samples if self.defense.randomized else 1


def passes(model: nn.Module) -> int:
    """Network forward passes per input image that ``model``'s last call made (1 for a plain model)."""
    return int(model.__dict__.get("last_passes", 1))


def set_adaptive(model: nn.Module, adaptive: bool) -> None:
    """Switch every defense wrapped inside ``model`` (defenses compose) to BPDA/EOT or back."""
    for m in model.modules():
        if isinstance(m, DefendedClassifier):
            m.adaptive = parse_flag(adaptive, "adaptive")


@contextlib.contextmanager
def adaptive_mode(model: nn.Module, adaptive: bool = True) -> Iterator[nn.Module]:
    """Every defense inside ``model`` in the given mode (BPDA/EOT when True) for the body; each
    one's own flag is restored afterwards, also when the body raises."""
    flags = [(m, m.adaptive) for m in model.modules() if isinstance(m, DefendedClassifier)]
    set_adaptive(model, adaptive)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.adaptive = flag
