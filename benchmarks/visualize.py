"""Class and filter visualization (``fragility-visualize``), on the ascent loop fooling images use.

Simonyan et al. 2014 (class models: ascend a class logit from a near-mean image); Yosinski et al.
2015 (priors, presets ``yosinski1..4``; filter visualization: ascend one channel's mean activation
with the gradient normalized each step). The loop is :func:`fragility.attacks.ascent.ascend`.

Examples::

    fragility-visualize model=cifar_resnet model.checkpoint=PATH mode=class preset=yosinski2
    fragility-visualize model=cifar_resnet mode=filter layer=layer3.2.conv2 channels=[0,1,2,3]

Pictures go to ``<results_dir>/visualize/`` (and to W&B with ``logger=wandb``); the same
functions are plain Python for tests and benchmarks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fragility.attacks.ascent import ascend, check_policy
from fragility.attacks.priors import Prior, build_priors, preset
from fragility.benchmarks.figures import image_grid
from fragility.errors import ConfigError
from fragility.rng import SampleRNG, mix64

log = logging.getLogger(__name__)


@dataclass
class Visualization:
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    units: list[int]  # the class or channel each image maximizes
    score: torch.Tensor  # final objective value (logit or mean activation)
    steps: torch.Tensor
    titles: list[str]


def _ascend(objective, x0: torch.Tensor, s: dict, model: nn.Module, rng: SampleRNG, keep_best: bool):
    """Gradient ascent with the settings ``s`` of a preset (shared by class and filter visualization)."""
    return ascend(
        objective,
        x0,
        steps=s["steps"],
        lr=s["lr"],
        policy=s["policy"],
        max_lr=s["max_lr"],
        desired_prog=s["desired_prog"],
        priors=s["priors"],
        center=_center(model, x0.shape[1]),
        rng=rng,
        keep_best=keep_best,
    )


def _center(model: nn.Module, channels: int) -> torch.Tensor:
    mean = getattr(model, "mean", None)
    return mean.detach().view(1, -1, 1, 1) if torch.is_tensor(mean) else torch.full((1, channels, 1, 1), 0.5)


def _start(model: nn.Module, units: Sequence[int], seed: int, noise: float, init: str = "mean") -> tuple[torch.Tensor, SampleRNG]:
    """``init="mean"``: Yosinski's ``mean_plus_rand`` start, the mean image plus small seeded
    Gaussian noise of std ``noise``; ``init="uniform"``: seeded uniform noise (a random image)."""
    if init not in ("mean", "uniform"):
        raise ConfigError(f"unknown init {init!r} (valid: mean, uniform)")
    c, h, w = model.input_size
    dev = _center(model, c).device
    rng = SampleRNG(mix64(torch.tensor(list(units), dtype=torch.long, device=dev) + (int(seed) << 32)))
    if init == "uniform":
        return rng.uniform(c, h, w).to(dev), rng
    x0 = (_center(model, c) + noise * rng.normal(c, h, w).to(dev)).clamp(0, 1)
    return x0, rng


def _settings(prior: str | None, steps: int | None, lr: float | None, policy: str | None, priors: Sequence[Prior] | None):
    """Preset values, each overridable; no preset means no priors and an rms step of 0.01."""
    p = preset(prior) if prior not in (None, "", "none") else None
    out = {
        "priors": list(priors) if priors is not None else (list(p.priors) if p else []),
        "steps": int(steps) if steps is not None else (p.steps if p else 200),
        "policy": check_policy(policy) if policy is not None else (p.policy if p else "rms"),
        "max_lr": p.max_lr if p else math.inf,
        "desired_prog": p.desired_prog if p else 0.0,
    }
    out["lr"] = float(lr) if lr is not None else (p.lr if p and p.policy == "constant" else 0.01)
    return out


def visualize_classes(
    model: nn.Module,
    classes: Sequence[int | str] | str = "all",
    *,
    prior: str | None = "yosinski3",
    priors: Sequence[Prior] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    policy: str | None = None,
    seed: int = 0,
    noise: float = 0.02,
    init: str = "mean",
    keep_best: bool = True,
) -> Visualization:
    """One image per class maximizing that class's logit (all classes in one batch)."""
    units = resolve_classes(model, classes)
    s = _settings(prior, steps, lr, policy, priors)
    x0, rng = _start(model, units, seed, noise, init)
    x0 = x0.expand(len(units), -1, -1, -1).clone() if len(x0) != len(units) else x0
    target = torch.tensor(units, dtype=torch.long, device=x0.device)

    def objective(x, idx):
        return model(x).gather(1, target[idx, None]).squeeze(1), None

    with _Frozen(model):
        out = _ascend(objective, x0, s, model, rng, keep_best)
        with torch.no_grad():
            p = torch.softmax(model(out.x).float(), 1)
    names = getattr(model, "class_names", [str(i) for i in range(p.shape[1])])
    titles = [f"{names[u]}\n{names[int(k)]} {float(c):.0%}" for u, k, c in zip(units, p.argmax(1), p.max(1).values)]
    return Visualization(out.x, units, out.score, out.steps, titles)


def resolve_classes(model: nn.Module, classes: Sequence[int | str] | str | int) -> list[int]:
    if isinstance(classes, str) and classes.lower() == "all":
        return list(range(int(model.num_classes)))
    items = [classes] if isinstance(classes, (int, str)) else list(classes)
    return [model.class_index(c) if hasattr(model, "class_index") else int(c) for c in items]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A submodule by its dotted name, with or without the wrapper's ``net.`` prefix."""
    modules = dict(model.named_modules())
    for key in (name, f"net.{name}"):
        if key and key in modules:
            return modules[key]
    convs = [k.removeprefix("net.") for k, m in modules.items() if isinstance(m, nn.Conv2d)]
    shown = ", ".join(convs) if len(convs) <= 7 else f"{', '.join(convs[:4])} ... {', '.join(convs[-3:])}"
    raise ConfigError(f"no layer {name!r} in {getattr(model, 'name', 'the model')} (conv layers: {shown or 'none'})")


def conv_layer_names(model: nn.Module) -> list[str]:
    return [k.removeprefix("net.") for k, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class _Reached(Exception):
    """Raised by the hook once the layer has run: the rest of the network is not needed
    (for VGG-16 that skips its 120M-parameter classifier on every step)."""


def channel_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Mean activation of ``channels[i]`` of ``layer`` for image ``x[i]`` (differentiable)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        store["a"] = out
        raise _Reached

    h = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        h.remove()
    if "a" not in store:
        raise ConfigError("the chosen layer did not run in the model's forward pass")
    a = store["a"]
    a = a[torch.arange(len(a), device=a.device), channels.to(a.device)]
    return a.flatten(1).mean(1) if a.dim() > 1 else a


def visualize_filters(
    model: nn.Module,
    layer: str,
    channels: Sequence[int] = (0, 1, 2, 3),
    *,
    prior: str | None = None,
    priors: Sequence[Prior] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    policy: str | None = None,
    seed: int = 0,
    noise: float = 0.02,
    init: str = "mean",
    keep_best: bool = True,
) -> Visualization:
    """One image per channel maximizing that channel's mean activation in ``layer``.
    Default: no priors, an rms-normalized step of 0.01 (the gradient normalized each step), 200 steps."""
    mod = find_layer(model, layer)
    units = [int(c) for c in channels]
    s = _settings(prior, steps, lr, policy, priors)
    x0, rng = _start(model, units, seed, noise, init)
    ch = torch.tensor(units, dtype=torch.long, device=x0.device)

    def objective(x, idx):
        return channel_activation(model, mod, x, ch[idx]), None

    with _Frozen(model):
        n_out = _channels_of(model, mod, x0[:1])
        bad = [c for c in units if not 0 <= c < n_out]
        if bad:
            raise ConfigError(f"layer {layer} has {n_out} channels; got channel {bad[0]}")
        out = _ascend(objective, x0, s, model, rng, keep_best)
        with torch.no_grad():
            score = channel_activation(model, mod, out.x, ch)
    titles = [f"{layer}[{c}]\nact {float(v):.3g}" for c, v in zip(units, score)]
    return Visualization(out.x, units, score, out.steps, titles)


def _channels_of(model: nn.Module, mod: nn.Module, x: torch.Tensor) -> int:
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["a"] = out
        raise _Reached

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        h.remove()
    return int(store["a"].shape[1])


class _Frozen:
    """Eval mode and no weight gradients while visualizing; both restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self):
        from fragility.models.wrapper import eval_mode

        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        self.ctx = eval_mode(self.model)
        self.ctx.__enter__()
        return self.model

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return False


# ---- pictures ---------------------------------------------------------------------------------
# ---- console script ---------------------------------------------------------------------------
def run_visualize(cfg: Any) -> dict[str, Path]:
    """Plain entry point behind ``fragility-visualize`` (``cfg``: conf/visualize.yaml)."""
    from omegaconf import OmegaConf

    from fragility.benchmarks.config import safe_instantiate
    from fragility.benchmarks.runner import resolve_device
    from fragility.benchmarks.wandb_logger import NullLogger

    allowed = list(cfg.get("allowed_targets") or [])
    device = resolve_device(cfg.device)
    torch.manual_seed(int(cfg.seed))
    model = safe_instantiate(cfg.model, allowed).to(device).eval()
    mode = str(cfg.mode)
    common = dict(
        prior=cfg.get("preset"),
        steps=cfg.get("steps"),
        lr=cfg.get("lr"),
        policy=cfg.get("policy"),
        seed=int(cfg.seed),
        init=str(cfg.get("init", "mean")),
    )
    if cfg.get("jitter") or cfg.get("decay") or cfg.get("blur") or cfg.get("norm_pct") or cfg.get("contrib_pct"):
        common["priors"] = build_priors(
            decay=float(cfg.get("decay") or 0),
            blur=float(cfg.get("blur") or 0),
            blur_every=int(cfg.get("blur_every") or 1),
            jitter=int(cfg.get("jitter") or 0),
            norm_pct=float(cfg.get("norm_pct") or 0),
            contrib_pct=float(cfg.get("contrib_pct") or 0),
        )
    if mode == "class":
        classes = cfg.get("classes", "all")
        classes = classes if isinstance(classes, (str, int)) else list(classes)
        vis = visualize_classes(model, classes, **common)
        tag = f"class_{cfg.get('preset') or 'custom'}"
    elif mode == "filter":
        if not cfg.get("layer"):
            raise ConfigError(f"mode=filter needs layer=NAME (conv layers: {', '.join(conv_layer_names(model)[-4:])} ...)")
        vis = visualize_filters(model, str(cfg.layer), list(cfg.channels), **common)
        tag = f"filter_{str(cfg.layer).replace('.', '_')}"
    else:
        raise ConfigError(f"unknown mode {mode!r} (valid: class, filter)")
    out = Path(cfg.results_dir) / "visualize" / f"{getattr(model, 'name', 'model')}_{tag}_s{int(cfg.seed)}.png"
    shown = "stretched per image" if cfg.get("stretch", True) else "as is"
    path = image_grid(
        vis.images,
        vis.titles,
        out,
        title=f"{getattr(model, 'name', '')} {mode} visualization ({tag}; {shown})",
        stretch=bool(cfg.get("stretch", True)),
    )
    logger = safe_instantiate(cfg.logger, allowed) if cfg.get("logger") is not None else NullLogger()
    try:
        logger.start(OmegaConf.to_container(cfg, resolve=True), name=f"visualize-{tag}", results_dir=Path(cfg.results_dir))
        logger.log_run({"mean_score": float(vis.score.mean())}, {"mode": mode, "tag": tag}, {f"visualize_{tag}": path})
    finally:
        logger.finish()
    print(f"[fragility] {mode} visualization: {path}  (mean score {float(vis.score.mean()):.4g}, steps {int(vis.steps.max())})")
    return {f"visualize_{tag}": path}


def main() -> None:
    from fragility.benchmarks.apps import console_app

    console_app("visualize", "fragility-visualize", run_visualize)
