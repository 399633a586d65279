"""Pictures of attacks: clean | adversarial | amplified perturbation, with labels and confidence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def _show(ax, img: torch.Tensor) -> None:
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
        _show(axes[0, j], clean[j])
        axes[0, j].set_title(f"true {name(labels[j])}\n{name(clean_pred[j])} {clean_conf[j]:.0%}", fontsize=7)
        _show(axes[1, j], adv[j])
        ok = int(adv_pred[j]) == int(labels[j])
        axes[1, j].set_title(f"{name(adv_pred[j])} {adv_conf[j]:.0%}", fontsize=7, color="black" if ok else "crimson")
        _show(axes[2, j], delta / (2 * scale) + 0.5)
        axes[2, j].set_title(f"|d|max {float(scale):.3f}", fontsize=7)
    for r, lab in enumerate(["clean", "adversarial", "perturbation\n(amplified)"]):
        axes[r, 0].set_ylabel(lab, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)
