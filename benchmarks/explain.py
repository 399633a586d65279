"""Where the network looks: saliency, SmoothGrad, Integrated Gradients and Grad-CAM, clean vs attacked.

Simonyan et al. 2014 (gradient saliency), Smilkov et al. 2017 (SmoothGrad), Sundararajan et al.
2017 (Integrated Gradients), Selvaraju et al. 2017 (Grad-CAM), all computed by Captum; Grad-CAM on
the last ``Conv2d`` of the model (found automatically), upsampled to the input size with
``LayerAttribution.interpolate``. Each map explains the model's own prediction for that image.

``explain=true`` on any run makes the runner call :func:`explain_figures`, which draws, for the
first attacked samples, the clean image, its maps, the adversarial image and its maps, each titled
with predicted label and confidence (``explain_saliency.png``, ``explain_gradcam.png`` in the
run's folder; logged to W&B and linked from the HTML leaderboard like every run picture).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fragility.benchmarks.figures import save_figure
from fragility.defenses import DefendedClassifier, adaptive_mode
from fragility.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "gradcam")
LABELS = {"gradient": "gradient", "smoothgrad": "SmoothGrad", "integrated_gradients": "Int. Grad.", "gradcam": "Grad-CAM"}


def last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"Grad-CAM needs a Conv2d layer; {getattr(model, 'name', 'the model')} has none")
    return convs[-1]


def attribution_map(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    method: str,
    *,
    layer: nn.Module | None = None,
    smooth_samples: int = 16,
    smooth_std: float = 0.15,
    ig_steps: int = 32,
) -> torch.Tensor:
    """A non-negative (N, H, W) map of how much each pixel drives ``target`` (Captum)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r} (valid: {', '.join(METHODS)})")
    x = images.detach().clone().float().requires_grad_(True)  # Captum wants a leaf that requires grad
    target = target.to(x.device).long()
    with torch.enable_grad():
        if method == "gradient":
            a = Saliency(model).attribute(x, target=target, abs=True).amax(1)
        elif method == "smoothgrad":
            a = (
                NoiseTunnel(Saliency(model))
                .attribute(x, nt_type="smoothgrad", nt_samples=smooth_samples, stdevs=smooth_std, target=target, abs=True)
                .amax(1)
            )
        elif method == "integrated_gradients":
            a = (
                IntegratedGradients(model)
                .attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps, internal_batch_size=max(len(x), 64))
                .abs()
                .sum(1)
            )
        else:
            cam = LayerGradCam(model, layer if layer is not None else last_conv(model))
            a = cam.attribute(x, target=target, relu_attributions=True)
            a = LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].clamp_min(0)
    return a.detach()


def explain(
    model: nn.Module, images: torch.Tensor, methods: Sequence[str] = METHODS, **kw
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Maps for the model's predicted class of each image; returns (maps, pred, conf)."""
    with torch.no_grad():
        p = torch.softmax(model(images).float(), 1)
    conf, pred = p.max(1)
    return {m: attribution_map(model, images, pred, m, **kw).cpu() for m in methods}, pred.cpu(), conf.cpu()


def cam_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two batches of maps (1: same place, 0: disjoint)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def _norm01(m: torch.Tensor) -> torch.Tensor:
    hi = torch.quantile(m.flatten(), 0.99).clamp_min(1e-12)
    return (m / hi).clamp(0, 1)


def _img(img: torch.Tensor):
    img = img.detach().cpu().float().clamp(0, 1)
    return (img[0].numpy(), "gray") if img.shape[0] == 1 else (img.permute(1, 2, 0).numpy(), None)


def explain_panel(
    clean: torch.Tensor,
    adv: torch.Tensor,
    clean_maps: dict[str, torch.Tensor],
    adv_maps: dict[str, torch.Tensor],
    clean_title: Sequence[str],
    adv_title: Sequence[str],
    path: str | Path,
    *,
    overlay: bool = False,
    title: str = "",
) -> Path:
    """Rows: samples; columns: clean, its maps, adversarial, its maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(clean_maps)
    k = len(clean)
    cols = 2 * (1 + len(methods))
    fig, axes = plt.subplots(k, cols, figsize=(1.35 * cols, 1.5 * k + 0.5), squeeze=False)
    for i in range(k):
        for side, (img, maps, t) in enumerate(((clean[i], clean_maps, clean_title[i]), (adv[i], adv_maps, adv_title[i]))):
            c0 = side * (1 + len(methods))
            arr, cmap = _img(img)
            axes[i, c0].imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[i, c0].set_title(t, fontsize=7, color="black" if side == 0 else "crimson")
            for j, m in enumerate(methods):
                ax = axes[i, c0 + 1 + j]
                mm = _norm01(maps[m][i]).numpy()
                if overlay:
                    ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                    ax.imshow(mm, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
                else:
                    ax.imshow(mm, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
                if i == 0:
                    ax.set_title(f"{'clean' if side == 0 else 'adv'} {LABELS.get(m, m)}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


def explain_figures(ctx, attack) -> dict[str, Path]:
    """The runner's ``explain=true`` hook: saliency and Grad-CAM panels for the first examples."""
    ex = ctx.examples
    if not ex or not len(ex.get("clean", [])):
        return {}
    model = ctx.model
    if not getattr(model, "differentiable", True):
        log.warning("explain: %s declares it is not differentiable; no attribution maps", getattr(model, "name", "model"))
        return {}
    k = min(len(ex["clean"]), 6)
    clean, adv = ex["clean"][:k].to(ctx.device), ex["adv"][:k].to(ctx.device)
    # Input transformations such as JPEG pass no gradient (all maps would be zero): explain through
    # a defense with its adaptive surrogate (BPDA identity backward, EOT average), as attacks do.
    wrapped = any(isinstance(m, DefendedClassifier) for m in model.modules())
    # Grad-CAM hooks an nn.Conv2d; a TorchScript or convolution-free model has none to hook, and
    # losing the run's result over a missing picture would be worse than drawing the saliency maps only
    cam = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if not cam:
        log.warning("explain: %s has no nn.Conv2d layer for Grad-CAM (TorchScript?); saliency maps only", model.name)
    methods = METHODS if cam else tuple(m for m in METHODS if m != "gradcam")
    with adaptive_mode(model, True):
        cm, cp, cc = explain(model, clean, methods)
        am, ap, ac = explain(model, adv, methods)
    names = model.class_names
    ct = [f"clean: {names[int(p)]} {float(c):.0%}" for p, c in zip(cp, cc)]
    at = [f"{attack.name}: {names[int(p)]} {float(c):.0%}" for p, c in zip(ap, ac)]
    head = f"{model.name} / {attack.name} {attack.describe()}" + (" (gradients: BPDA/EOT through the defense)" if wrapped else "")
    sal = [m for m in METHODS if m != "gradcam"]
    figs = {
        "explain_saliency": explain_panel(
            clean.cpu(),
            adv.cpu(),
            {m: cm[m] for m in sal},
            {m: am[m] for m in sal},
            ct,
            at,
            ctx.run_dir / "explain_saliency.png",
            title=f"{head}: where the network looks",
        ),
    }
    if not cam:
        return figs
    overlap = cam_overlap(cm["gradcam"], am["gradcam"])
    figs["explain_gradcam"] = explain_panel(
        clean.cpu(),
        adv.cpu(),
        {"gradcam": cm["gradcam"]},
        {"gradcam": am["gradcam"]},
        ct,
        [f"{t}\nCAM overlap {float(o):.2f}" for t, o in zip(at, overlap)],
        ctx.run_dir / "explain_gradcam.png",
        overlay=True,
        title=f"{head}: Grad-CAM",
    )
    return figs
