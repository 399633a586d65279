"""Pictures and the success-versus-area table of an adversarial patch (see attacks/patch.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from fragility.benchmarks.figures import _show, save_figure
from fragility.stats import wilson_interval


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


def _attacked(ctx, attack):
    tgt = ctx.model.class_index(attack.target)
    ok = (ctx.clean_pred == ctx.data.y) & (ctx.data.y != tgt)
    idx = ok.nonzero().flatten()
    return ctx.data.images(idx), ctx.data.y[idx]


def area_curve(attack, ctx, areas, path: str | Path) -> Path:
    """Score the patch at each of ``areas`` on the run's correctly classified images; PNG + CSV."""
    x, y = _attacked(ctx, attack)
    df = score_areas(attack, ctx.model, x, y, areas, int(ctx.cfg.batch_size), ctx.device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path.with_suffix(".csv"), index=False)
    return plot_area_curve(df, path, f"{ctx.model.name} / {ctx.data.name}: patch -> {attack.target}")


def sticker(attack, path: str | Path) -> Path:
    """The patch itself, enlarged, with its target."""
    fig, ax = plt.subplots(figsize=(2.4, 2.6))
    _show(ax, attack.patch)
    ax.set_title(f"patch -> {attack.target} ({attack.area:.0%}, {attack.shape})", fontsize=8)
    return save_figure(fig, path, dpi=110)


@torch.inference_mode()
def patched_grid(attack, ctx, path: str | Path, k: int = 16) -> Path:
    """Up to ``k`` held-out images with the patch pasted, titled with prediction and confidence."""
    x, y = _attacked(ctx, attack)
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
        _show(ax, adv[j])
        hit = names[int(pred[j])] == str(attack.target) or int(pred[j]) == ctx.model.class_index(attack.target)
        ax.set_title(
            f"{names[int(y[j])]} -> {names[int(pred[j])]} {conf[j]:.0%}", fontsize=6, color="crimson" if hit else "black"
        )
    fig.suptitle(f"{ctx.model.name}: patch -> {attack.target}, area {attack.area:.0%} (red: target reached)", fontsize=8)
    return save_figure(fig, path, dpi=110)
