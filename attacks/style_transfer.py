"""Neural style transfer by optimisation (Gatys, Ecker, Bethge, CVPR 2016), batched over images.

The image is optimised so that a feature network sees the *content* of one image (its activations
at a deep layer) and the *style* of another (the Gram matrices of activations at several layers).
The feature network is any zoo classifier: features are read with forward hooks on the layers of
its ``.net`` while the image goes through the :class:`~fragility.models.Classifier` itself, so
normalization stays in the model wrapper and the input is a [0, 1] image. VGG19 with ImageNet
weights is Gatys's network (content ``relu4_2``, style ``relu1_1..relu5_1``); the CIFAR ResNets and
the digits CNN have defaults of their own, so everything runs offline.

Losses, per image (both are relative, so one set of weights suits networks whose activations have
very different scales; Gatys's absolute sums need weights retuned per network and layer):

- ``gram(F) = F F^T / (H W)`` for activations ``F`` of shape (C, H*W);
- content loss ``|F_c(x) - F_c(content)|^2 / |F_c(content)|^2`` at the content layer;
- style loss: the mean over style layers of ``|gram(F_l(x)) - A_l|^2 / |A_l|^2`` with target
  ``A_l = (1 - s) gram(F_l(content)) + s gram(F_l(style))``: ``s`` is the *strength*, an
  interpolation of the style statistics in feature space (0 keeps the content's own, 1 is Gatys).

The optimiser is Adam on the pixels, clipped to [0, 1] after every step. Adam's state is per
element and the total loss is a sum of per-image losses, so a batch gives the same images as one
image at a time (L-BFGS, Gatys's choice, couples the images of a batch through its line search).

Example::

    ext = FeatureExtractor(build_digits_cnn())               # default layers for the digits CNN
    out = style_transfer(ext, content, style, strength=1.0, steps=200)
    out.images, out.style_loss, out.content_loss
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fragility.budget import parse_number
from fragility.errors import ConfigError, InputError
from fragility.models.wrapper import eval_mode
from fragility.rng import SampleRNG

#: default (content layer, style layers) by the class name of the classifier's ``.net``
DEFAULT_LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Gatys et al.: content relu4_2, style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of VGG19
    "VGG": ("features.22", ("features.1", "features.6", "features.11", "features.20", "features.29")),
    "CifarResNet": ("layer2", ("bn1", "layer1", "layer2", "layer3")),
    "DigitsCNN": ("conv2", ("conv1", "conv2", "conv3")),
}
INITS = ("content", "noise")
_EPS = 1e-12


class _Enough(Exception):
    """Raised by a hook once every requested layer has been seen: the rest of the network is not
    needed (for VGG19 this skips the classifier head, most of its parameters)."""


def _net(model: nn.Module) -> nn.Module:
    return model.net if hasattr(model, "net") else model


def default_layers(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """The content layer and style layers for ``model``: Gatys's for VGG, this project's for the
    CIFAR ResNets and the digits CNN, otherwise up to five evenly spaced convolutions (content:
    the one two thirds of the way down)."""
    net = _net(model)
    if type(net).__name__ in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[type(net).__name__]
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(net).__name__} has no convolution layers: give content_layer and style_layers")
    k = min(5, len(convs))
    style = tuple(convs[round(i * (len(convs) - 1) / max(1, k - 1))] for i in range(k))
    return convs[(2 * len(convs)) // 3], style


class FeatureExtractor:
    """Activations of named layers of a classifier's ``.net`` for [0, 1] images.

    ``model`` is a :class:`~fragility.models.Classifier` (or anything with a ``.net`` whose forward
    normalizes); images whose size or channel count differ from ``model.input_size`` are resized
    (bilinear) and converted (grey <-> RGB) first, so an 8x8 image can be read by a 32x32 network.
    ``stop_early``: abandon the forward pass once every layer is read (set it False for a model
    wrapped in a query counter, which counts a pass when it completes).
    """

    def __init__(
        self,
        model: nn.Module,
        content_layer: str | None = None,
        style_layers: Sequence[str] | None = None,
        *,
        stop_early: bool = True,
    ) -> None:
        self.model = model
        self.stop_early = stop_early
        c_default, s_default = default_layers(model)
        self.content_layer = str(content_layer) if content_layer else c_default
        self.style_layers = tuple(str(s) for s in style_layers) if style_layers else s_default
        modules = dict(_net(model).named_modules())
        for name in (self.content_layer, *self.style_layers):
            if name not in modules or name == "":
                some = ", ".join(n for n in list(modules)[1:12])
                raise ConfigError(f"{type(_net(model)).__name__} has no layer {name!r} (layers include: {some}, ...)")
        self.layers = tuple(dict.fromkeys((*self.style_layers, self.content_layer)))
        self._modules = {n: modules[n] for n in self.layers}

    @property
    def name(self) -> str:
        return str(getattr(self.model, "name", type(_net(self.model)).__name__))

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        size = getattr(self.model, "input_size", None)
        if size is None:
            return x
        c, h, w = size
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise InputError(f"feature network {self.name} takes {c} channels, the images have {x.shape[1]}")
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def f(_module, _inp, out):
                feats.setdefault(name, out)
                if self.stop_early and len(feats) == len(self.layers):
                    raise _Enough

            return f

        handles = [m.register_forward_hook(hook(n)) for n, m in self._modules.items()]
        try:
            self.model(self._adapt(images))
        except _Enough:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in feats]
        if missing:
            raise ConfigError(f"layers {missing} of {self.name} were not reached by its forward pass")
        return feats


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix per image: (N, C, H, W) -> (N, C, C), ``F F^T / (H W)``."""
    n, c = f.shape[:2]
    flat = f.reshape(n, c, -1)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def content_loss(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image relative squared error of activations: ``|f - t|^2 / |t|^2``."""
    num = (f - target).pow(2).flatten(1).sum(1)
    return num / target.pow(2).flatten(1).sum(1).clamp_min(_EPS)


def style_loss(grams: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image mean over layers of the relative squared error of Gram matrices."""
    per_layer = [(g - t).pow(2).sum((1, 2)) / t.pow(2).sum((1, 2)).clamp_min(_EPS) for g, t in zip(grams, targets)]
    return torch.stack(per_layer).mean(0)


@dataclass
class Targets:
    """What the optimisation matches: content activations and (interpolated) style Grams."""

    content: torch.Tensor
    grams: list[torch.Tensor]  # interpolated at the strength
    style_grams: list[torch.Tensor]  # the style image's own (strength 1), for reporting


def make_targets(extractor: FeatureExtractor, content: torch.Tensor, style: torch.Tensor, strength) -> Targets:
    with torch.no_grad():
        fc, fs = extractor(content), extractor(style)
        s = torch.as_tensor(strength, dtype=content.dtype, device=content.device).reshape(-1, 1, 1)
        gc = [gram(fc[layer]) for layer in extractor.style_layers]
        gs = [gram(fs[layer]) for layer in extractor.style_layers]
        mixed = [(1 - s) * a + s * b for a, b in zip(gc, gs)]
    return Targets(fc[extractor.content_layer].detach(), mixed, gs)


def losses(extractor: FeatureExtractor, x: torch.Tensor, targets: Targets, style_grams: Sequence[torch.Tensor] | None = None):
    """(content loss, style loss) per image of ``x`` against ``targets`` (or other Grams)."""
    f = extractor(x)
    g = [gram(f[layer]) for layer in extractor.style_layers]
    return content_loss(f[extractor.content_layer], targets.content), style_loss(g, style_grams or targets.grams)


@dataclass
class StyleOutput:
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    content_loss: torch.Tensor  # per image, of the output, against the content image
    style_loss: torch.Tensor  # per image, of the output, against the style image's Grams (strength 1)
    start_style_loss: torch.Tensor  # per image, of the content image itself, against the style image's Grams
    seconds: float


def check_settings(*, steps, lr, content_weight, style_weight, **_) -> None:
    """ConfigError unless the optimisation can move the image: ``steps >= 1`` (no step leaves the
    start image, content without style or noise without content), ``lr > 0``, weights ``>= 0``."""
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not parse_number(lr, "lr") > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    for key, value in (("content_weight", content_weight), ("style_weight", style_weight)):
        if parse_number(value, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")


def style_transfer(
    extractor: FeatureExtractor,
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    strength: float | torch.Tensor = 1.0,
    content_weight: float = 1.0,
    style_weight: float = 30.0,
    steps: int = 200,
    lr: float = 0.02,
    init: str = "content",
    rng: SampleRNG | None = None,
) -> StyleOutput:
    """Stylize each ``content[i]`` with ``style[i]`` (same shape, [0, 1]); ``strength`` is a number
    or one per image in [0, 1]. A strength of 0 returns the content images exactly (no step is taken
    for them, whatever ``init``). ``init="noise"`` starts from seeded uniform noise (``rng``: the
    per-sample streams, so a batch equals one image at a time)."""
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r} (valid: {', '.join(INITS)})")
    check_settings(steps=steps, lr=lr, content_weight=content_weight, style_weight=style_weight)
    if content.shape != style.shape:
        raise InputError(f"content {tuple(content.shape)} and style {tuple(style.shape)} images differ in shape")
    t0 = time.perf_counter()
    s = torch.as_tensor(strength, dtype=content.dtype, device=content.device).reshape(-1)
    s = s.expand(len(content)) if len(s) == 1 else s
    if len(s) != len(content) or bool(((s < 0) | (s > 1)).any()):
        raise ConfigError("strength must lie in [0, 1], one number or one per image")
    with eval_mode(extractor.model):
        targets = make_targets(extractor, content, style, s)
        with torch.no_grad():
            _, start_style = losses(extractor, content, targets, targets.style_grams)
        if init == "noise":
            u = rng.uniform(*content.shape[1:]) if rng is not None else torch.rand(content.shape)
            x0 = u.to(content.device, content.dtype)
        else:
            x0 = content.clone()
        keep = (s == 0).view(-1, 1, 1, 1)
        x = torch.where(keep, content, x0).detach().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(int(steps) if bool((s > 0).any()) else 0):
            lc, ls = losses(extractor, x, targets)
            total = (content_weight * lc + style_weight * ls).sum()
            (grad,) = torch.autograd.grad(total, x)
            x.grad = torch.where(keep, torch.zeros_like(grad), grad)
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        out = torch.where(keep, content, x.detach())
        with torch.no_grad():
            lc, ls = losses(extractor, out, targets, targets.style_grams)
    return StyleOutput(out, lc.detach(), ls.detach(), start_style.detach(), time.perf_counter() - t0)


def pick_textures(labels: torch.Tensor, pool_labels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each label, the index of a pool item of another class (pool label -1: unlabeled, such
    as a painting, always eligible), chosen by ``u`` in [0, 1) (one per label, from the per-sample
    streams). Vectorized: the ``r``-th eligible item is found with a cumulative sum."""
    eligible = pool_labels.to(labels.device)[None, :] != labels[:, None]
    counts = eligible.sum(1)
    if bool((counts == 0).any()):
        raise InputError("no texture image of another class for some images (give a texture source with other classes)")
    r = (u.to(labels.device) * counts).long().clamp_max(counts - 1)
    return (eligible.long().cumsum(1) <= r[:, None]).sum(1)
