"""AutoAttack (Linf): fragility ``attack=autoattack`` vs torchattacks ``AutoAttack`` vs ART ``AutoAttack``.

Same model, same seeded test images (the first ``n`` of a seeded permutation, correctly classified
or not), same budget, one process; every method's adversarial images are judged by one function
(``common.robust_accuracy``: eval mode, fp32, robust = correct before and after). Reported per
method: robust accuracy with a 95% Wilson interval (``fragility.stats.wilson_interval``), mean
model queries per image (fragility: its own query counter; peers: images through the model, counted
by ``common.Counting``), wall seconds, and the ratio of seconds to the faster peer.

Every method gets the same model object, built by fragility's builders, so with its convolution
weights stored channels_last (``model.channels_last=true``, the default); ``torchattacks_nchw`` runs
torchattacks on a copy stored NCHW, as a torchattacks user's model would be.

Models (``--models``):

- ``resnet20``: the shared published ResNet-20 (CIFAR-10, eps ``--eps``, default 8/255);
- ``resnet20_at``: an FGSM-RS fine-tune of it (``--at-checkpoint``, a ``model.pt`` from
  ``fragility-train``; see docs/autoattack.md for the command);
- ``digits_x1000`` / ``digits``: the digits CNN with logits multiplied by 1000, and plain
  (eps ``--digits-eps``, default 0.3, the digits budget of ``conf/attack_dataset/pgd_digits.yaml``).

The peers run their own ensembles with their defaults: torchattacks ``AutoAttack(version='standard')``
(APGD-CE, APGD-T, FAB-T, Square 5000, in the reference's order, but APGD, APGD-T and FAB keep
torchattacks' default of 10 steps where the reference runs 100; ``fragility_steps10`` is fragility
with that setting, for a like-for-like time, and ``fragility_steps10_compiled`` the same on
``model.compile=true``); ART ``AutoAttack`` (APGD-CE and APGD-DLR
with 5 random inits each, DeepFool, Square 5000 with 5 restarts; ``eps_step = eps`` so APGD starts
at the paper's step ``2 eps``).

    python benchmarks/peers/bench_autoattack.py --n 500 --threads 1 \\
        --at-checkpoint results/train/resnet20_fgsm_rs_aa/model.pt [--models resnet20,resnet20_at,digits_x1000,digits]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Counting, cifar_resnet, cifar_test, device_name, pick_device, robust_accuracy, shared_dir, sync

from fragility.attacks import AutoAttack
from fragility.budget import parse_budget
from fragility.stats import wilson_interval


class Scaled(nn.Module):
    """Logits multiplied by ``factor``: predictions unchanged, cross-entropy saturated."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def load(name: str, args) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    if name in ("resnet20", "resnet20_at"):
        shared = shared_dir(args.shared)
        ckpt = None
        if name == "resnet20_at":
            if not args.at_checkpoint or not Path(args.at_checkpoint).is_file():
                sys.exit("benchmark: resnet20_at needs --at-checkpoint PATH/model.pt (see docs/autoattack.md)")
            ckpt = args.at_checkpoint
        model = cifar_resnet(shared, 20, ckpt)
        data = cifar_test(shared, args.n, seed=0)
        return model, data.images().contiguous(), data.y, parse_budget(args.eps)
    from fragility.datasets import Digits
    from fragility.models.digits_cnn import build

    data = Digits("test").load(min(args.n_digits, 539), 0)
    base = build().eval()
    model = Scaled(base, 1000.0).eval() if name == "digits_x1000" else base
    return model, data.images().contiguous(), data.y, parse_budget(args.digits_eps)


def run_fragility(model, x, y, eps, n_classes):
    res = AutoAttack(eps=eps, norm="linf", version="standard", seed=0)(model, x, y)
    return res.adv, float(res.queries.float().mean()), AutoAttack(eps=eps).extra_metrics(res)


def run_fragility_steps10(model, x, y, eps, n_classes):
    """torchattacks' settings: its AutoAttack leaves APGD, APGD-T and FAB at their default 10 steps."""
    att = AutoAttack(eps=eps, norm="linf", version="standard", steps=10, seed=0)
    res = att(model, x, y)
    return res.adv, float(res.queries.float().mean()), att.extra_metrics(res)


def run_fragility_bf16(model, x, y, eps, n_classes):
    """The reference's settings (100 steps), Square's candidate forwards in bf16 (successes re-checked in fp32)."""
    att = AutoAttack(eps=eps, norm="linf", version="standard", square_precision="bf16", seed=0)
    res = att(model, x, y)
    return res.adv, float(res.queries.float().mean()), att.extra_metrics(res)


def run_fragility_steps10_bf16(model, x, y, eps, n_classes):
    """torchattacks' step counts, Square's candidate forwards in bf16."""
    att = AutoAttack(eps=eps, norm="linf", version="standard", steps=10, square_precision="bf16", seed=0)
    res = att(model, x, y)
    return res.adv, float(res.queries.float().mean()), att.extra_metrics(res)


def run_fragility_steps10_compiled(model, x, y, eps, n_classes):
    """torchattacks' step counts on ``model.compile=true`` (``models/compile.py``: Inductor, the
    compile time inside the measured seconds), on a copy so the other methods keep the eager model."""
    from fragility.models.compile import compile_model

    compiled = compile_model(copy.deepcopy(model))
    return run_fragility_steps10(compiled, x, y, eps, n_classes)


def run_torchattacks(model, x, y, eps, n_classes):
    import torchattacks

    counted = Counting(model)
    atk = torchattacks.AutoAttack(counted, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=0)
    adv = atk(x, y)
    return adv.detach(), counted.images / len(x), {}


def run_torchattacks_nchw(model, x, y, eps, n_classes):
    """torchattacks as its users run it: the same weights stored NCHW (PyTorch's default layout;
    fragility's model builders store convolution weights channels_last, ``models/compile.py``)."""
    return run_torchattacks(copy.deepcopy(model).to(memory_format=torch.contiguous_format), x, y, eps, n_classes)


def run_art(model, x, y, eps, n_classes):
    from art.attacks.evasion import AutoAttack as ArtAutoAttack
    from art.estimators.classification import PyTorchClassifier

    counted = Counting(model)
    clf = PyTorchClassifier(
        counted,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.is_cuda else "cpu",
    )
    atk = ArtAutoAttack(clf, norm=np.inf, eps=eps, eps_step=eps, batch_size=min(len(x), 250))
    adv = atk.generate(x.cpu().numpy(), y=y.cpu().numpy())
    return torch.from_numpy(adv).float(), counted.images / len(x), {}


METHODS = {
    "fragility": run_fragility,
    "fragility_steps10": run_fragility_steps10,
    "fragility_bf16": run_fragility_bf16,
    "fragility_steps10_bf16": run_fragility_steps10_bf16,
    "fragility_steps10_compiled": run_fragility_steps10_compiled,
    "torchattacks": run_torchattacks,
    "torchattacks_nchw": run_torchattacks_nchw,
    "ART": run_art,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the model, the images and every method run there")
    ap.add_argument("--n", type=int, default=500, help="CIFAR-10 test images per ResNet model")
    ap.add_argument("--n-digits", type=int, default=500, help="digits test images (539 at most)")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--digits-eps", default="0.3")
    ap.add_argument("--models", default="resnet20,resnet20_at,digits_x1000,digits")
    ap.add_argument("--methods", default="fragility,fragility_steps10,torchattacks,ART")
    ap.add_argument("--at-checkpoint", default="results/train/resnet20_fgsm_rs_aa/model.pt")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--out", default="results/bench_autoattack.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    print(f"# device {device_name(dev)}, threads {args.threads}, torch {torch.__version__}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print("| model | n | eps | method | robust acc [95% CI] | mean queries | seconds | time / faster peer |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for name in args.models.split(","):
        model, x, y, eps = load(name, args)
        model, x, y = model.to(dev), x.to(dev), y.to(dev)
        n_classes = 10
        rows = {}
        for method in args.methods.split(","):
            torch.manual_seed(0)
            np.random.seed(0)
            sync(dev)
            t0 = time.perf_counter()
            adv, queries, extra = METHODS[method](model, x, y, eps, n_classes)
            sync(dev)
            seconds = time.perf_counter() - t0
            adv = adv.to(dev)
            model.eval()  # a peer may have left the model in training mode
            if (adv - x).abs().max() > eps + 1e-5:
                sys.exit(f"{method} left the Linf ball: {(adv - x).abs().max():.5f} > {eps:.5f}")
            m = robust_accuracy(model, x, y, adv)
            k = round(m["robust_acc"] * len(y))
            lo, hi = wilson_interval(k, len(y))
            rows[method] = {
                "model": name,
                "n": len(y),
                "eps": eps,
                "method": method,
                "clean_acc": m["clean_acc"],
                "robust_acc": m["robust_acc"],
                "ci": [lo, hi],
                "mean_queries": queries,
                "seconds": seconds,
                "threads": args.threads,
                "device": device_name(dev),
                "extra": extra,
            }
            with out.open("a") as f:
                f.write(json.dumps(rows[method]) + "\n")
            print(f"# {name} {method}: robust {m['robust_acc']:.3f} in {seconds:.1f} s {extra}", flush=True)
        peers = [r["seconds"] for k, r in rows.items() if not k.startswith("fragility")]
        for r in rows.values():
            ratio = f"{r['seconds'] / min(peers):.2f}x" if peers else "-"
            print(
                f"| {name} | {r['n']} | {r['eps']:.4g} | {r['method']} | {100 * r['robust_acc']:.1f}% "
                f"[{100 * r['ci'][0]:.1f}%, {100 * r['ci'][1]:.1f}%] | {r['mean_queries']:.0f} | {r['seconds']:.1f} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
