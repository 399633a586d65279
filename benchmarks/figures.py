"""Every picture the harness draws, from what the attacks return.

Attacks compute and return what a picture needs (adversarial images, per-sample extras, a trained
patch); this module draws: the clean | adversarial | perturbation grid of every run, and the
pictures particular to an attack (:data:`ATTACK_FIGURES`, keyed by ``attack.name``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Circle

from fragility.models import predict
from fragility.stats import wilson_interval


def show(ax, img: torch.Tensor) -> None:
    img = img.detach().cpu().float().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, save as PNG (creating folders) and close a matplotlib figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def adversarial_grid(
    clean: torch.Tensor,
    adv: torch.Tensor,
    labels: torch.Tensor,
    clean_pred: torch.Tensor,
    clean_conf: torch.Tensor,
    adv_pred: torch.Tensor,
    adv_conf: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    k: int = 8,
) -> Path:
    """Save a 3-row grid (clean, adversarial, perturbation scaled to full range) for ``k`` samples."""
    k = min(k, len(clean))
    fig, axes = plt.subplots(3, k, figsize=(1.7 * k, 5.6), squeeze=False)
    name = lambda i: class_names[int(i)] if 0 <= int(i) < len(class_names) else str(int(i))
    for j in range(k):
        delta = (adv[j] - clean[j]).float()
        scale = delta.abs().max().clamp_min(1e-12)
        show(axes[0, j], clean[j])
        axes[0, j].set_title(f"true {name(labels[j])}\n{name(clean_pred[j])} {clean_conf[j]:.0%}", fontsize=7)
        show(axes[1, j], adv[j])
        ok = int(adv_pred[j]) == int(labels[j])
        axes[1, j].set_title(f"{name(adv_pred[j])} {adv_conf[j]:.0%}", fontsize=7, color="black" if ok else "crimson")
        show(axes[2, j], delta / (2 * scale) + 0.5)
        axes[2, j].set_title(f"|d|max {float(scale):.3f}", fontsize=7)
    for r, lab in enumerate(["clean", "adversarial", "perturbation\n(amplified)"]):
        axes[r, 0].set_ylabel(lab, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)


def image_grid(
    images: torch.Tensor, titles: Sequence[str], path: str | Path, *, title: str = "", cols: int = 10, stretch: bool = False
) -> Path:
    """Save ``images`` as a grid of small panels with titles. ``stretch`` shows each image minus
    its mean colour, scaled to fill the range (for low-contrast visualizations; say so in the caption)."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.65 * rows + (0.35 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        img = images[i].detach().cpu().float()
        if stretch:  # remove the image's own mean colour, scale the rest to fill [0, 1]
            d = img - img.mean((1, 2), keepdim=True)
            img = 0.5 + d / (2 * d.abs().max().clamp_min(1e-8))
        img = img.clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


def circled_grid(
    clean, adv, labels, clean_pred, clean_conf, adv_pred, adv_conf, class_names, path, title: str = "", k: int = 8
) -> Path:
    """Two rows (clean, attacked) of ``k`` images, the changed pixels circled, with labels and
    confidences before and after."""
    k = min(k, len(clean))
    name = lambda i: class_names[int(i)] if 0 <= int(i) < len(class_names) else str(int(i))
    fig, axes = plt.subplots(2, k, figsize=(1.8 * k, 4.2), squeeze=False)
    for j in range(k):
        changed = ((adv[j] - clean[j]).abs().amax(0) > 0).nonzero()
        for r, img in enumerate((clean[j], adv[j])):
            ax = axes[r, j]
            im = img.detach().cpu().float().clamp(0, 1)
            ax.imshow(
                im[0] if im.shape[0] == 1 else im.permute(1, 2, 0),
                cmap="gray" if im.shape[0] == 1 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            radius = max(1.5, img.shape[-1] / 12)
            for yy, xx in changed.tolist():
                ax.add_patch(Circle((xx, yy), radius, fill=False, color="yellow" if r else "cyan", lw=1.4))
        axes[0, j].set_title(f"true {name(labels[j])}\n{name(clean_pred[j])} {float(clean_conf[j]):.0%}", fontsize=7)
        fooled = int(adv_pred[j]) != int(labels[j])
        axes[1, j].set_title(f"{name(adv_pred[j])} {float(adv_conf[j]):.0%}", fontsize=7, color="crimson" if fooled else "black")
    axes[0, 0].set_ylabel("clean", fontsize=8)
    axes[1, 0].set_ylabel("attacked", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- adversarial patch ------------------------------------------------------------------------


@torch.inference_mode()
def score_areas(
    attack, model, images: torch.Tensor, labels: torch.Tensor, areas, batch_size: int = 256, device: torch.device | str = "cpu"
) -> pd.DataFrame:
    """Targeted and untargeted success of ``attack``'s patch pasted at each area (random location and
    rotation per image) on ``images`` whose label is not the target. One row per area."""
    tgt = model.class_index(attack.target) if hasattr(model, "class_index") else int(attack.target)
    keep = labels != tgt
    images, labels = images[keep], labels[keep]
    rows = []
    for a in areas:
        preds = []
        for i in range(0, len(images), batch_size):
            x = attack.apply(images[i : i + batch_size].to(device), area=float(a))
            preds.append(model(x).argmax(1).cpu())
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        m, kt, ku = len(pred), int((pred == tgt).sum()), int((pred != labels).sum())
        lo, hi = wilson_interval(kt, m)
        rows.append(
            {
                "area": float(a),
                "n": m,
                "targeted": kt / m if m else float("nan"),
                "targeted_ci_low": lo,
                "targeted_ci_high": hi,
                "untargeted": ku / m if m else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def plot_area_curve(df: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = 100 * df["area"]
    ax.plot(x, 100 * df["targeted"], "o-", label="targeted")
    ax.fill_between(x, 100 * df["targeted_ci_low"], 100 * df["targeted_ci_high"], alpha=0.2)
    ax.plot(x, 100 * df["untargeted"], "s--", label="untargeted")
    ax.set_xlabel("patch area (% of image)")
    ax.set_ylabel("success on held-out images (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path, dpi=110)


def _patch_targets(ctx, attack):
    tgt = ctx.model.class_index(attack.target)
    ok = (ctx.clean_pred == ctx.data.y) & (ctx.data.y != tgt)
    idx = ok.nonzero().flatten()
    return ctx.data.images(idx), ctx.data.y[idx]


def area_curve(attack, ctx, areas, path: str | Path) -> Path:
    """Score the patch at each of ``areas`` on the run's correctly classified images; PNG + CSV."""
    x, y = _patch_targets(ctx, attack)
    df = score_areas(attack, ctx.model, x, y, areas, int(ctx.cfg.batch_size), ctx.device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path.with_suffix(".csv"), index=False)
    return plot_area_curve(df, path, f"{ctx.model.name} / {ctx.data.name}: patch -> {attack.target}")


def sticker(attack, path: str | Path) -> Path:
    """The patch itself, enlarged, with its target."""
    fig, ax = plt.subplots(figsize=(2.4, 2.6))
    show(ax, attack.patch)
    ax.set_title(f"patch -> {attack.target} ({attack.area:.0%}, {attack.shape})", fontsize=8)
    return save_figure(fig, path, dpi=110)


@torch.inference_mode()
def patched_grid(attack, ctx, path: str | Path, k: int = 16) -> Path:
    """Up to ``k`` held-out images with the patch pasted, titled with prediction and confidence."""
    x, y = _patch_targets(ctx, attack)
    x, y = x[:k], y[:k]
    adv = attack.apply(x.to(ctx.device)).cpu()
    p = torch.softmax(ctx.model(adv.to(ctx.device)).float(), 1).cpu()
    conf, pred = p.max(1)
    names = ctx.model.class_names
    cols = min(8, max(1, len(x)))
    rows = max(1, -(-len(x) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.95 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= len(x):
            ax.axis("off")
            continue
        show(ax, adv[j])
        hit = names[int(pred[j])] == str(attack.target) or int(pred[j]) == ctx.model.class_index(attack.target)
        ax.set_title(
            f"{names[int(y[j])]} -> {names[int(pred[j])]} {conf[j]:.0%}", fontsize=6, color="crimson" if hit else "black"
        )
    fig.suptitle(f"{ctx.model.name}: patch -> {attack.target}, area {attack.area:.0%} (red: target reached)", fontsize=8)
    return save_figure(fig, path, dpi=110)


# ---- what each attack shows -------------------------------------------------------------------
def _example_predictions(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    return predict(ctx.model, ctx.examples["adv"], device=ctx.device)


def _before_after(ctx, attack, draw, filename: str) -> Path:
    """``draw`` (a before/after grid) over the run's first attacked examples."""
    ex = ctx.examples
    pred, conf = _example_predictions(ctx)
    idx = ex["idx"]
    before = (ex["clean"], ex["adv"], ex["labels"], ctx.clean_pred[idx], ctx.clean_conf[idx], pred, conf)
    title = f"{ctx.model.name} / {attack.name} {attack.describe()}"
    return draw(*before, ctx.model.class_names, Path(ctx.run_dir) / filename, title=title)


def _has_examples(ctx) -> bool:
    return bool(ctx.examples) and len(ctx.examples["clean"]) > 0


def onepixel_figures(ctx, attack) -> dict[str, Path]:
    """The changed pixels circled, before and after."""
    if not _has_examples(ctx):
        return {}
    return {"onepixel": _before_after(ctx, attack, circled_grid, "onepixel.png")}


def fooling_figures(ctx, attack) -> dict[str, Path]:
    """A grid of the first fooling images, each titled with its target and confidence."""
    if not _has_examples(ctx):
        return {}
    pred, conf = _example_predictions(ctx)
    names = ctx.model.class_names
    titles = [f"{names[int(k)]}\n{float(c):.4%}" for k, c in zip(pred, conf)]
    title = f"{ctx.model.name}: fooling images ({attack.describe()})"
    return {"fooling": image_grid(ctx.examples["adv"], titles, ctx.run_dir / "fooling.png", title=title)}


def patch_figures(ctx, attack) -> dict[str, Path]:
    """The printable patch (PNG + JSON artifact, also at ``attack.save`` when set), the sticker, the
    patched held-out images and, with ``curve_areas``, the success-versus-area curve."""
    if attack.patch is None:
        return {}
    figs = {"patch_png": attack.save(ctx.run_dir / "patch.png")}
    if attack.save_path:
        attack.save(attack.save_path)
    figs["patch"] = sticker(attack, ctx.run_dir / "patch_view.png")
    figs["patched"] = patched_grid(attack, ctx, ctx.run_dir / "patched.png")
    if attack.curve_areas:
        figs["area_curve"] = area_curve(attack, ctx, attack.curve_areas, ctx.run_dir / "area_curve.png")
    return figs


def style_panel(content, texture, stylized, class_names, y_shape, y_texture, path, title: str = "") -> Path:
    """Three rows: content | style (texture) | stylized, labelled with the classes (a texture of
    unknown class, label -1, is a "painting"). Also the picture of a cue-conflict set
    (``fragility-style``)."""
    name = lambda i: class_names[int(i)] if 0 <= int(i) < len(class_names) else "painting"
    k = len(content)
    titles = [f"content {name(y)}" for y in y_shape] + [f"style {name(y)}" for y in y_texture] + ["stylized"] * k
    return image_grid(torch.cat([content, texture, stylized]), titles, path, title=title, cols=k)


def stylize_figures(ctx, attack) -> dict[str, Path]:
    """Content | style | stylized for the run's first attacked examples (``texture`` extras)."""
    ex, res = ctx.examples, ctx.result
    if not _has_examples(ctx) or res is None or "texture" not in res.extras:
        return {}
    k = len(ex["clean"])
    path = style_panel(
        ex["clean"],
        res.extras["texture"][:k].cpu(),
        ex["adv"],
        ctx.model.class_names,
        ex["labels"],
        res.extras["texture_label"][:k].cpu(),
        Path(ctx.run_dir) / "stylize.png",
        title=f"{ctx.model.name} / stylize {attack.describe()}",
    )
    return {"stylize": path}


#: pictures particular to an attack, keyed by ``attack.name``; each gets the run context and attack
ATTACK_FIGURES: dict[str, Callable[..., dict[str, Path]]] = {
    "onepixel": onepixel_figures,
    "fooling": fooling_figures,
    "patch": patch_figures,
    "stylize": stylize_figures,
}


def run_figures(ctx, attack) -> dict[str, Path]:
    """Every picture of a finished run: the example grid, then the attack's own pictures."""
    figs: dict[str, Path] = {}
    if _has_examples(ctx):
        figs["examples"] = _before_after(ctx, attack, adversarial_grid, "examples.png")
    draw = ATTACK_FIGURES.get(attack.name)
    if draw is not None:
        figs.update(draw(ctx, attack) or {})
    return figs
