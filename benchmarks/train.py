"""``fragility-train``: adversarial training recipes, resumable, with per-epoch robust accuracy.

Recipes (``recipe=``):

- ``fgsm_rs``: "fast is better than free" (Wong, Rice, Kolter, ICLR 2020): one FGSM step of size
  ``alpha`` (default 1.25 * eps) from a uniform random start in the eps ball, cyclic (triangular)
  learning rate rising linearly to ``lr_max`` over the first 2/5 of training and back to 0.
- ``pgd``: Madry, Makelov, Schmidt, Tsipras, Vladu (ICLR 2018): train on PGD-``pgd_steps`` examples
  (step ``alpha``, default 2.5 * eps / steps, random start), piecewise-constant learning rate
  divided by 10 at 50% and 75% of training.
- ``standard``: no attack (a clean baseline trained with the same schedule as ``fgsm_rs``).
- ``gaussian``: Gaussian data augmentation ``x + N(0, noise_sigma^2)`` (Cohen, Rosenfeld, Kolter,
  ICML 2019), the base classifier for ``defense=smoothing``; same cyclic schedule.

Every epoch ends with clean and PGD accuracy on a held-out slice of the training file (never
trained on) and a checkpoint: ``last.pt`` (weights, optimizer, epoch, history: everything needed
to resume) and ``model.pt`` (the plain state dict of the network, for ``model=checkpoint`` or
``defense=checkpoint``). Both hold only tensors, numbers and strings, so they load with
``torch.load(weights_only=True)``. A run started again with the same ``out_dir`` resumes after
the last finished epoch and ends with the same weights as an uninterrupted run (same seed, CPU):
all randomness of epoch ``e`` comes from a generator seeded with ``(seed, e)``.

Example::

    fragility-train                                   # digits CNN, FGSM-RS at eps 0.2 (seconds)
    fragility-train model=cifar_resnet train_data=../shared/data/cifar10/train.npz \\
        eps=8/255 epochs=5 augment=true out_dir=results/train/resnet20_fgsm_rs
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fragility.budget import parse_budget
from fragility.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)
RECIPES = ("fgsm_rs", "pgd", "standard", "gaussian")


@dataclass
class TrainData:
    x: torch.Tensor  # uint8 or float NCHW
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    name: str

    @staticmethod
    def floats(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def load_train_data(spec: str, val_size: int, seed: int, max_train: int | None = None) -> TrainData:
    """``digits`` (the fixed digits train split) or a path to an npz (x uint8 NHWC, y). A seeded
    slice of ``val_size`` images is held out for the per-epoch evaluation."""
    if str(spec) == "digits":
        from fragility.datasets.digits import digits_arrays

        x, y = digits_arrays("train")
        xt, yt, name = torch.from_numpy(x), torch.from_numpy(y), "digits-train"
    else:
        from fragility.datasets import Npz

        s = Npz(str(spec)).load(None, 0)
        xt, yt, name = s.x, s.y, s.name
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(yt)))
    if not 0 <= val_size < len(yt):
        raise DataError(f"val_size={val_size} must be between 0 and the {len(yt)} training images")
    val, tr = perm[:val_size], perm[val_size:]
    if max_train is not None:
        tr = tr[: int(max_train)]
    tr = tr.sort().values  # keep the stored order; each epoch shuffles with its own generator
    return TrainData(xt[tr], yt[tr], xt[val], yt[val], name)


def lr_at(cfg: DictConfig, step: int, total: int) -> float:
    """Learning rate as a pure function of the step, so a resumed run needs no scheduler state."""
    t = step / max(total, 1)
    if cfg.recipe == "pgd":  # Madry et al.: piecewise constant, /10 at 50% and 75%
        return float(cfg.lr_max) * (0.1 ** ((t >= 0.5) + (t >= 0.75)))
    # Wong et al.: triangular cycle 0 -> lr_max (at 2/5) -> 0
    peak = 0.4
    return float(cfg.lr_max) * (t / peak if t < peak else max(0.0, (1 - t) / (1 - peak)))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding 4) and horizontal flip, batched (the CIFAR recipe of both papers)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    p = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    iy = (dy[:, None] + torch.arange(h))[:, None, :, None]
    ix = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return p[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], iy, ix]


def adversarial_batch(
    model, x: torch.Tensor, y: torch.Tensor, cfg: DictConfig, eps: float, alpha: float, g: torch.Generator
) -> torch.Tensor:
    """Training examples for the recipe (model in training mode, as in both papers' code)."""
    if cfg.recipe == "gaussian":
        return x + torch.randn(x.shape, generator=g).mul_(float(cfg.noise_sigma)).to(x.device)
    if cfg.recipe == "standard" or eps == 0:
        return x
    steps = 1 if cfg.recipe == "fgsm_rs" else int(cfg.pgd_steps)
    delta = (torch.rand(x.shape, generator=g) * 2 - 1).mul_(eps).to(x.device)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    return (x + delta).detach()


def evaluate(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, batch_size: int, device) -> tuple[float, float]:
    """Clean and PGD-``steps`` (Linf, eps, random start) accuracy of ``model`` on (x, y)."""
    from fragility.attacks.pgd import PGD

    if len(y) == 0:
        return math.nan, math.nan
    attack = PGD(eps=eps, steps=steps) if eps > 0 and steps > 0 else None
    clean = robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = TrainData.floats(x[i : i + batch_size]), y[i : i + batch_size]
        with torch.no_grad():
            ok = model(xb.to(device)).argmax(1).cpu() == yb
        clean += int(ok.sum())
        if attack is None:
            robust += int(ok.sum())
        elif ok.any():
            res = attack(model, xb[ok], yb[ok], keys=torch.arange(i, i + len(yb))[ok])
            robust += int((~res.success).sum())
    return clean / len(y), robust / len(y)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)  # an interruption never leaves half a checkpoint


def _reset_parameters(net: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in net.modules():
        if hasattr(m, "reset_parameters") and m is not net:
            m.reset_parameters()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training; returns the history and paths."""
    from fragility.benchmarks.config import safe_instantiate
    from fragility.benchmarks.runner import resolve_device
    from fragility.models.checkpoint import load_checkpoint

    if cfg.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {cfg.recipe!r} (valid: {', '.join(RECIPES)})")
    eps = parse_budget(cfg.eps, "eps")
    epochs, bs, seed = int(cfg.epochs), int(cfg.batch_size), int(cfg.seed)
    if epochs < 1 or bs < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs}, {bs}")
    if cfg.recipe == "pgd" and int(cfg.pgd_steps) < 1:
        raise ConfigError(f"pgd_steps must be >= 1, got {cfg.pgd_steps}")
    if cfg.alpha is not None:
        alpha = parse_budget(cfg.alpha, "alpha")
    else:
        alpha = 1.25 * eps if cfg.recipe == "fgsm_rs" else 2.5 * eps / max(int(cfg.pgd_steps), 1)
    torch.set_num_threads(int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)

    model = safe_instantiate(cfg.model, list(cfg.get("allowed_targets") or []))
    if cfg.init == "scratch":
        _reset_parameters(model.net, seed)
    elif cfg.init != "model":
        raise ConfigError(f"init must be scratch or model, got {cfg.init!r}")
    model = model.to(device)
    data = load_train_data(str(cfg.train_data), int(cfg.val_size), seed, cfg.get("max_train"))
    if tuple(data.x.shape[1:]) != tuple(model.input_size):
        raise DataError(f"{data.name} has {tuple(data.x.shape[1:])} images but {model.name} expects {model.input_size}")
    opt = torch.optim.SGD(
        model.net.parameters(), lr=0.0, momentum=float(cfg.momentum), weight_decay=float(cfg.weight_decay), nesterov=False
    )
    steps_per_epoch = math.ceil(len(data.y) / bs)
    total = epochs * steps_per_epoch
    start_epoch, history = 0, []
    ckpt = out / "last.pt"
    if ckpt.is_file() and cfg.resume:
        state = load_checkpoint(ckpt)
        if state.get("recipe") != cfg.recipe or int(state.get("total_steps", -1)) != total:
            raise CheckpointError(
                f"{ckpt} belongs to another training (recipe/epochs/data differ); use a new out_dir or resume=false"
            )
        model.net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), json.loads(state["history"])
        print(f"[fragility-train] resuming {ckpt} after epoch {start_epoch}/{epochs}")

    print(
        f"[fragility-train] {model.name} on {data.name} ({len(data.y)} train, {len(data.y_val)} held out): recipe {cfg.recipe} "
        f"eps {eps:.4g} alpha {alpha:.4g}, {epochs} epochs x {steps_per_epoch} steps, lr_max {cfg.lr_max}, {torch.get_num_threads()} thread(s)"
    )
    stop = epochs if cfg.get("stop_after") is None else min(epochs, start_epoch + int(cfg.stop_after))
    for epoch in range(start_epoch, stop):
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        t0 = time.perf_counter()
        perm = torch.randperm(len(data.y), generator=g)
        model.train()
        tot_loss = tot_ok = seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not cfg.progress, leave=False)
        for k in bar:
            b = perm[k * bs : (k + 1) * bs]
            x = TrainData.floats(data.x[b])
            if cfg.augment:
                x = augment(x, g)
            x, y = x.to(device), data.y[b].to(device)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(cfg, epoch * steps_per_epoch + k, total)
            x_adv = adversarial_batch(model, x, y, cfg, eps, alpha, g)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * len(y)
            tot_ok += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if k % 10 == 0:
                bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_ok / seen:.3f}")
        model.eval()
        train_s = time.perf_counter() - t0
        clean, robust = evaluate(model, data.x_val, data.y_val, eps, int(cfg.eval_pgd_steps), 256, device)
        row = {
            "epoch": epoch + 1,
            "train_loss": tot_loss / seen,
            "train_acc": tot_ok / seen,
            "val_clean_acc": clean,
            "val_pgd_acc": robust,
            "train_seconds": train_s,
            "eval_seconds": time.perf_counter() - t0 - train_s,
        }
        history.append(row)
        state = {
            "model": model.net.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch + 1,
            "recipe": str(cfg.recipe),
            "total_steps": total,
            "history": json.dumps(history),
        }
        _atomic_save(state, ckpt)
        _atomic_save(model.net.state_dict(), out / "model.pt")
        print(
            f"[fragility-train] epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.3f} train acc {row['train_acc']:.1%}  "
            f"held-out clean {clean:.1%}  "
            + (f"PGD-{cfg.eval_pgd_steps} {robust:.1%}  " if eps > 0 and int(cfg.eval_pgd_steps) > 0 else "")
            + f"({train_s:.0f}s train, {row['eval_seconds']:.0f}s eval)",
            flush=True,
        )
    (out / "history.json").write_text(
        json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "history": history}, indent=1, default=str)
    )
    model.eval()
    return {"model": model, "history": history, "checkpoint": out / "model.pt", "state": ckpt}


def main() -> None:
    from fragility.benchmarks.apps import console_app

    console_app("train", "fragility-train", train)


if __name__ == "__main__":
    main()
