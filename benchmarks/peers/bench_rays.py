"""Hard-label attacks: fragility ``RayS`` and ``HopSkipJump`` vs ART ``HopSkipJump`` vs foolbox ``HopSkipJumpAttack``.

``--norm linf`` (the default): RayS, fragility's HopSkipJump in Linf, and the peers in Linf;
``--norm l2``: fragility's HopSkipJump (the escalation's answer for L2 budgets) and the peers in L2.

Same model (the shared CIFAR-10 ResNet-20), same images (the first ``--n`` correctly classified
images of the seeded test subset), same eps, same query budget per image (``--queries``), one
process. All three read only the predicted label. The HopSkipJump implementations are
minimum-norm attacks: they return their closest adversarial whatever its size, so every method's
output is projected onto the eps ball (and [0, 1]) before it is judged, and an image counts as
broken only when that projected image is misclassified. Judging is one function for all
(``common.robust_accuracy``: eval mode, fp32, robust = correct before and after), with a 95% Wilson
interval (``fragility.stats.wilson_interval``, the one that ``fragility.benchmarks.metrics`` uses).

Queries: fragility reports its own per-image counter (``AttackResult.queries``; cross-checked
against the images through a counting wrapper). The peers take no query limit, so their
iteration counts are chosen from their query costs (read from their source) to fit the budget (see
``art_settings`` / ``foolbox_settings``) and what they really spent is measured by a counting
wrapper (images through the model, per call): ART runs one image at a time anyway, so it is
called per image and each image's count is exact; foolbox asks every image of its batch in every
call (its loops run until all of them are done), so it is called on batches of ``FB_BATCH`` (10)
images and each image's count is the number of calls on its batch. ART draws its random starting
images from an unseeded ``np.random.RandomState()``, so its numbers vary a little from run to run.

``fragility_label_only`` is the first fragility attack (RayS in Linf, HopSkipJump in L2) on the
same network whose output is only the one-hot predicted label (times 10); it reads only labels, so
its result must be identical, which is checked.

    python benchmarks/peers/bench_rays.py --threads 1 [--n 100 --queries 1000 --eps 8/255]
    python benchmarks/peers/bench_rays.py --threads 1 --norm l2 --eps 0.5 --queries 2000 --out results/bench_hsj_l2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Counting,
    cifar_resnet,
    cifar_test,
    correct_subset,
    device_name,
    pick_device,
    robust_accuracy,
    shared_dir,
    sync,
)

from fragility.attacks.hsj import HopSkipJump
from fragility.attacks.rays import RayS
from fragility.budget import parse_budget
from fragility.stats import wilson_interval

N_CLASSES = 10
DIM = 3 * 32 * 32


class LabelOnly(nn.Module):
    """The network's predicted label only: ``one_hot(argmax) * 10`` (no scores, no useful gradient)."""

    def __init__(self, model: nn.Module, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.model, self.n_classes = model, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return F.one_hot(logits.argmax(1), self.n_classes).to(logits.dtype) * 10


class Calls(Counting):
    """``Counting`` plus the number of calls and the batch sizes seen; float64 input (ART's
    HopSkipJump builds its candidates in float64 numpy) is cast to the network's float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls = 0
        self.sizes: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.sizes.add(len(x))
        return super().forward(x.float() if x.dtype == torch.float64 else x)


def hsj_schedule(budget: int, fixed: int, per_iter: int, evals: int = 100) -> tuple[int, int]:
    """HopSkipJump spends ``int(evals * sqrt(i + 1))`` queries on the gradient estimate of
    iteration ``i``, plus ``per_iter`` (binary search, step-size search), plus ``fixed`` once.
    Returns (iterations, initial evals): the most iterations that fit ``budget`` at the peers'
    default ``evals`` (100), then the largest initial evals that still fit that many iterations."""

    def cost(t: int, e: int) -> int:
        return fixed + sum(int(e * math.sqrt(i + 1)) + per_iter for i in range(t))

    t = 1
    while cost(t + 1, evals) <= budget:
        t += 1
    e = evals if cost(t, evals) <= budget else 1
    while cost(t, e + 1) <= budget:
        e += 1
    return t, e


# Estimated query costs (``site-packages/{art,foolbox}/attacks/.../hop_skip_jump.py``):
# ART, per image: 1 prediction of the clean image, ~3 random draws until one is misclassified,
# 10 for the L2 binary search of that start (threshold 0.001), 1 success check at the end; per
# iteration a Linf binary search of ceil(log2(1 / theta)) = 19 steps (theta = 0.01 / D) and ~2
# halvings of the step size.
ART_FIXED, ART_PER_ITER = 15, 21
# L2: ART's theta is 0.01 / sqrt(D), so its binary search takes ceil(log2(sqrt(D) / 0.01)) = 13 steps
ART_FIXED_L2, ART_PER_ITER_L2 = 15, 15
# foolbox, per batch: ~2 random draws and up to ~25 blending steps (LinearSearchBlendedUniformNoise,
# steps=50, until every image is adversarial), 1 check, a binary search of ceil(log2(D^2)) = 24
# steps, 1 assert, 1 final check in ``__call__``; per step the same binary search, 2 asserts and
# ~3 halvings of the step size (the most any image of the batch needs). The blending and halving
# counts vary from batch to batch (10-image batches spent 989 to 1020 queries at 54 / 29), hence the
# margin: ~40 blending steps, ~6 halvings.
FB_FIXED, FB_PER_ITER = 69, 32
# L2: the binary search to gamma / D^1.5 takes ceil(log2(D^1.5)) = 18 steps
FB_FIXED_L2, FB_PER_ITER_L2 = 63, 26


def art_settings(budget: int, norm: str = "linf") -> dict:
    t, e = hsj_schedule(budget, *((ART_FIXED, ART_PER_ITER) if norm == "linf" else (ART_FIXED_L2, ART_PER_ITER_L2)))
    return {"max_iter": t, "init_eval": e, "max_eval": 10000, "init_size": 100}


def foolbox_settings(budget: int, norm: str = "linf") -> dict:
    t, e = hsj_schedule(budget, *((FB_FIXED, FB_PER_ITER) if norm == "linf" else (FB_FIXED_L2, FB_PER_ITER_L2)))
    return {"steps": t, "initial_gradient_eval_steps": e, "max_gradient_eval_steps": 10000}


def run_fragility(model, x, y, eps, budget, norm="linf", attack="rays"):
    counted = Calls(model)
    if attack == "rays":
        res, settings = RayS(eps=eps, queries=budget)(counted, x, y), {"queries": budget, "tol": 1e-3}
    else:
        res, settings = (
            HopSkipJump(eps=eps, norm=norm, queries=budget)(counted, x, y),
            {"queries": budget, "gamma": 1.0, "starts": 10},
        )
    q = res.queries.long()
    # the wrapper also sees the attack's one final forward of the adversarial batch
    through = counted.images - len(x)
    extra = {
        "boundary_dist": res.extras["boundary_dist"],
        "success": res.success,
        "queries_through_wrapper": through,
    }
    if through != int(q.sum()):
        extra["note"] = f"{attack} counted {int(q.sum())} queries but {through} images went through the model"
    return res.adv, q, settings, extra


def run_fragility_label_only(model, x, y, eps, budget, norm="linf"):
    return run_fragility(LabelOnly(model).eval(), x, y, eps, budget, norm, "rays" if norm == "linf" else "hsj")


def run_fragility_hsj(model, x, y, eps, budget, norm="linf"):
    return run_fragility(model, x, y, eps, budget, norm, "hsj")


def run_art(model, x, y, eps, budget, norm="linf"):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    counted = Calls(model)
    clf = PyTorchClassifier(
        counted,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=N_CLASSES,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.is_cuda else "cpu",
    )
    settings = art_settings(budget, norm)
    atk = HopSkipJump(clf, targeted=False, norm=np.inf if norm == "linf" else 2, batch_size=128, verbose=False, **settings)
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    adv, q = [], []
    for i in range(len(xs)):  # ART attacks one image at a time anyway; per call, the count is exact
        before = counted.images
        adv.append(atk.generate(xs[i : i + 1], y=ys[i : i + 1]))
        q.append(counted.images - before)
    return torch.from_numpy(np.concatenate(adv)).float(), torch.tensor(q), settings, {}


#: images per foolbox call: its loops (blending search, step-size search) run until every image of the
#: batch is done and ask all of them each time, so a larger batch spends more queries per image (at
#: 100 images, 4 steps cost 1072 queries per image where 10 images cost 989)
FB_BATCH = 10


def run_foolbox(model, x, y, eps, budget, norm="linf"):
    import foolbox as fb

    settings = foolbox_settings(budget, norm)
    atk = fb.attacks.HopSkipJumpAttack(constraint=norm, **settings)
    raw, q, notes = [], [], set()
    for i in range(0, len(x), FB_BATCH):
        xb, yb = x[i : i + FB_BATCH], y[i : i + FB_BATCH]
        counted = Calls(model)
        fmodel = fb.PyTorchModel(counted, bounds=(0, 1), device=x.device)
        adv, _, _ = atk(fmodel, xb, yb, epsilons=eps)
        raw.append(adv.detach().float())
        if counted.sizes == {len(xb)}:  # every call was the whole batch: each image was asked once per call
            q.append(torch.full((len(xb),), counted.calls, dtype=torch.long))
        else:
            q.append(torch.full((len(xb),), round(counted.images / len(xb)), dtype=torch.long))
            notes.add(f"foolbox calls of sizes {sorted(counted.sizes)}: per-image queries are the batch mean")
    extra = {"note": "; ".join(sorted(notes))} if notes else {}
    return torch.cat(raw), torch.cat(q), {**settings, "batch": FB_BATCH}, extra


METHODS = {
    "fragility": ("fragility RayS", run_fragility),
    "fragility_label_only": ("fragility RayS, label-only model", run_fragility_label_only),
    "fragility_hsj": ("fragility HopSkipJump", run_fragility_hsj),
    "ART": ("ART HopSkipJump", run_art),
    "foolbox": ("foolbox HopSkipJumpAttack", run_foolbox),
}
#: in L2 RayS does not apply: fragility's reference row is its HopSkipJump
METHODS_L2 = {
    "fragility": ("fragility HopSkipJump", run_fragility_hsj),
    "fragility_label_only": ("fragility HopSkipJump, label-only model", run_fragility_label_only),
    "ART": ("ART HopSkipJump", run_art),
    "foolbox": ("foolbox HopSkipJumpAttack", run_foolbox),
}


def fmt_settings(s: dict) -> str:
    short = {"initial_gradient_eval_steps": "init_evals", "max_gradient_eval_steps": "max_evals"}
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in s.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the model, the images and every method run there")
    ap.add_argument("--n", type=int, default=100, help="correctly classified CIFAR-10 test images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test subset")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--queries", type=int, default=1000, help="query budget per image, for every method")
    ap.add_argument("--norm", default="linf", choices=("linf", "l2"))
    ap.add_argument("--methods", default=None, help="comma-separated; default: every method of the norm")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--out", default="results/bench_rays.json")
    args = ap.parse_args()
    methods = METHODS if args.norm == "linf" else METHODS_L2
    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    eps = parse_budget(args.eps)
    shared = shared_dir(args.shared)
    model = cifar_resnet(shared, 20).to(dev)
    x, y, ids = correct_subset(model, cifar_test(shared, None, args.seed), args.n)
    x, y = x.to(dev), y.to(dev)
    n = len(y)
    print(
        f"# device {device_name(dev)}, threads {args.threads}, torch {torch.__version__}; ResNet-20, "
        f"{n} correctly classified CIFAR-10 test images (seed {args.seed}), {args.norm} eps {args.eps}, "
        f"budget {args.queries} queries per image",
        flush=True,
    )
    rows, outs = {}, {}
    for method in (args.methods or ",".join(methods)).split(","):
        label, fn = methods[method]
        torch.manual_seed(0)
        np.random.seed(0)
        sync(dev)
        t0 = time.perf_counter()
        try:
            adv, q, settings, extra = fn(model, x, y, eps, args.queries, args.norm)
        except Exception as e:  # a peer that fails is reported, not fatal
            print(f"# {method}: failed: {type(e).__name__}: {e}", flush=True)
            rows[method] = {"method": method, "label": label, "error": f"{type(e).__name__}: {e}"}
            continue
        sync(dev)
        seconds = time.perf_counter() - t0
        model.eval()  # a peer may have left the model in training mode
        adv = adv.to(dev)
        delta = (adv - x).flatten(1)
        if args.norm == "linf":
            dist = delta.abs().amax(1)
            judged = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
        else:
            dist = delta.norm(dim=1)
            judged = (x + (adv - x) * (eps / dist.clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)).clamp(0, 1)
        m = robust_accuracy(model, x, y, judged)
        k = round(m["robust_acc"] * n)
        lo, hi = wilson_interval(k, n)
        with torch.no_grad():
            raw_adv = (model(adv).argmax(1) != y).cpu()
        qf = q.double()
        rows[method] = {
            "method": method,
            "label": label,
            "n": n,
            "eps": eps,
            "budget": args.queries,
            "settings": settings,
            "clean_acc": m["clean_acc"],
            "robust_acc": m["robust_acc"],
            "ci": [lo, hi],
            "mean_queries": float(qf.mean()),
            "median_queries": float(qf.median()),
            "max_queries": int(q.max()),
            "over_budget": int((q > args.queries).sum()),
            # the distance of the method's own (unprojected) output, over the images where it is adversarial
            "median_dist": float(dist[raw_adv.to(dev)].median() * (255 if args.norm == "linf" else 1)) if raw_adv.any() else None,
            "raw_adversarial": int(raw_adv.sum()),
            "seconds": seconds,
            "seconds_per_image": seconds / n,
            "threads": args.threads,
            "device": device_name(dev),
        }
        if "note" in extra:
            rows[method]["note"] = extra["note"]
        if "queries_through_wrapper" in extra:
            rows[method]["queries_through_wrapper"] = extra["queries_through_wrapper"]
        outs[method] = (judged.cpu(), q, extra)
        print(
            f"# {method}: robust {m['robust_acc']:.3f}, mean queries {qf.mean():.0f}, {seconds:.1f} s ({fmt_settings(settings)})",
            flush=True,
        )

    ref = rows.get("fragility")
    ref_name = "RayS" if args.norm == "linf" else "HopSkipJump"
    unit = "Linf (x255)" if args.norm == "linf" else "L2"
    ref = ref if ref and "error" not in ref else None
    print()
    print(
        "| method | settings | robust acc [95% CI] | mean queries | median queries | max queries "
        f"| median {unit} of own output | s / image | s vs {ref_name} | queries vs {ref_name} |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows.values():
        if "error" in r:
            print(f"| {r['label']} | - | error: {r['error']} | - | - | - | - | - | - | - |")
            continue
        ratio_s = f"{r['seconds'] / ref['seconds']:.2f}x" if ref else "-"
        linf = "-" if r["median_dist"] is None else f"{r['median_dist']:.2f}"
        ratio_q = f"{r['mean_queries'] / ref['mean_queries']:.2f}x" if ref and ref["mean_queries"] else "-"
        print(
            f"| {r['label']} | {fmt_settings(r['settings'])} | {100 * r['robust_acc']:.1f}% "
            f"[{100 * r['ci'][0]:.1f}%, {100 * r['ci'][1]:.1f}%] | {r['mean_queries']:.0f} | {r['median_queries']:.0f} "
            f"| {r['max_queries']} | {linf} | {r['seconds_per_image']:.3f} | {ratio_s} | {ratio_q} |",
            flush=True,
        )
    print()
    print(
        f"Robust accuracy: share of the {n} images still classified correctly after each method's output is "
        f"projected onto the {args.norm} ball of radius {args.eps} (the HopSkipJump attacks minimise the norm and may "
        f"return adversarials outside it). Median {unit}: of each method's unprojected output, over the images "
        f"where it is misclassified (fragility's attacks stop an image as soon as its boundary is within eps, so its distances "
        f"are at most eps; its boundary distance is extras['boundary_dist'])."
    )
    for method, r in rows.items():
        if "error" in r:
            continue
        if method in ("ART", "foolbox"):
            print(
                f"Note ({r['label']}): it takes no query limit, so its iterations were chosen from its query cost "
                f"to fit {args.queries} per image and cannot be capped exactly; it used mean {r['mean_queries']:.0f}, "
                f"max {r['max_queries']} ({r['over_budget']} of {n} images over the budget)."
            )
        if "note" in r:
            print(f"Note ({r['label']}): {r['note']}")
    if "fragility" in outs and "fragility_label_only" in outs:
        (a, qa, ea), (b, qb, eb) = outs["fragility"], outs["fragility_label_only"]
        same = (
            torch.equal(ea["success"], eb["success"])
            and torch.equal(qa, qb)
            and torch.equal(a, b)
            and rows["fragility"]["robust_acc"] == rows["fragility_label_only"]["robust_acc"]
        )
        diff = int((ea["success"] != eb["success"]).sum())
        print(
            f"Label-only check: {ref_name} on the one-hot label model gives "
            + (
                "identical success, queries and adversarial images (it reads only labels)."
                if same
                else f"a DIFFERENT result ({diff} images differ in success; queries equal: {torch.equal(qa, qb)}; "
                f"images equal: {torch.equal(a, b)})."
            )
        )
        rows["fragility_label_only"]["identical_to_fragility"] = bool(same)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "n": n,
        "ids": ids.tolist(),
        "norm": args.norm,
        "eps": eps,
        "queries": args.queries,
        "seed": args.seed,
        "threads": args.threads,
    }
    out.write_text(json.dumps({"meta": meta, "rows": list(rows.values())}, indent=1) + "\n")
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
