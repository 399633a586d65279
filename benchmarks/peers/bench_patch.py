"""fragility's adversarial patch vs ART's ``AdversarialPatchPyTorch``, at the same settings, in one run.

Both train a square patch for the same target on the same training images (``--steps`` Adam steps of
``--batch`` images, lr ``--lr``, rotation ±22.5°, patch area 8-12% of the image) against the same
model, then both patches are scored by one evaluator (fragility's placement: exact 10% area, random
location and rotation per held-out image, Wilson 95% interval); ART's own ``apply_patch`` score is
printed beside it. Prints seconds per training step and the ratio.

    python benchmarks/peers/bench_patch.py --shared ../shared --steps 50

ART sizes its patch relative to the image edge: a square of side ``s * 32`` covers ``s**2`` of a
32x32 image, so area 8-12% is ART ``scale_min, scale_max = sqrt(0.08), sqrt(0.12)``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", str(Path(__file__).resolve().parents[3] / "shared")))
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--target", default="truck")
    ap.add_argument("--area", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    from fragility.attacks.patch import Patch, quantize
    from fragility.benchmarks.figures import score_areas
    from fragility.datasets import Npz
    from fragility.models.cifar_resnet import CIFAR10_CLASSES, build
    from fragility.stats import wilson_interval

    shared = Path(args.shared)
    ckpt = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th"}[args.depth]
    model = build(args.depth, str(shared / "models" / "cifar10" / ckpt)).eval()
    tgt = model.class_index(args.target)
    train = Npz(str(shared / "data/cifar10/train.npz"), CIFAR10_CLASSES, "cifar10").load(None, args.seed + 1)
    keep = (train.y != tgt).nonzero().flatten()[: args.steps * args.batch]  # the same images for both
    x_train, y_train = train.images(keep), train.y[keep]
    test = Npz(str(shared / "data/cifar10/test.npz"), CIFAR10_CLASSES, "cifar10").load(args.n_test, args.seed)
    x_test, y_test = test.images(), test.y
    with torch.inference_mode():
        ok = model(x_test).argmax(1) == y_test
    x_test, y_test = x_test[ok], y_test[ok]
    scale = (0.8, 1.2)

    # fragility
    ours = Patch(
        target=args.target,
        area=args.area,
        shape="square",
        rotation=22.5,
        scale=scale,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
    )
    Patch(target=args.target, area=args.area, steps=2, batch_size=args.batch).fit(model, x_train, y_train)  # warm-up
    t0 = time.perf_counter()
    ours.fit(model, x_train, y_train)
    t_ours = (time.perf_counter() - t0) / args.steps

    # ART, same model, images, steps (one epoch of steps * batch images), optimizer, lr, rotation, area range
    clf = PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10, clip_values=(0.0, 1.0)
    )
    art = AdversarialPatchPyTorch(
        clf,
        rotation_max=22.5,
        scale_min=math.sqrt(args.area * scale[0]),
        scale_max=math.sqrt(args.area * scale[1]),
        learning_rate=args.lr,
        max_iter=1,
        batch_size=args.batch,
        patch_shape=(3, 32, 32),
        patch_type="square",
        optimizer="Adam",
        targeted=True,
        verbose=False,
    )
    y_onehot = np.eye(10, dtype=np.float32)[np.full(len(x_train), tgt)]
    art.generate(x=x_train[: 2 * args.batch].numpy(), y=y_onehot[: 2 * args.batch])  # warm-up, then a fresh patch
    art.reset_patch(0.5)
    art._optimizer = torch.optim.Adam([art._patch], lr=args.lr)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    art_patch, _ = art.generate(x=x_train.numpy(), y=y_onehot)
    t_art = (time.perf_counter() - t0) / args.steps

    # one evaluator for both: fragility's exact-area placement on the held-out, correctly classified images
    theirs = Patch(target=args.target, area=args.area, shape="square", rotation=22.5, seed=args.seed)
    theirs.patch = quantize(torch.from_numpy(art_patch).float())
    rows = []
    for name, p, sec in (("fragility", ours, t_ours), ("ART AdversarialPatchPyTorch", theirs, t_art)):
        df = score_areas(p, model, x_test, y_test, [args.area])
        rows.append((name, sec, float(df.targeted[0]), float(df.targeted_ci_low[0]), float(df.targeted_ci_high[0]), int(df.n[0])))
    # ART's own evaluator for its own patch (centre-scaled square at sqrt(area), random rotation and shift)
    keep_t = y_test != tgt
    with torch.inference_mode():
        art_adv = art.apply_patch(x_test[keep_t].numpy(), scale=math.sqrt(args.area))
        k = int((model(torch.from_numpy(art_adv).float()).argmax(1) == tgt).sum())
    m = int(keep_t.sum())
    lo, hi = wilson_interval(k, m)

    print(
        f"\nadversarial patch, resnet{args.depth}, target {args.target}, area {args.area:.0%}, {args.steps} steps x "
        f"{args.batch} images, Adam lr {args.lr}, {args.threads} thread(s); held-out: {m} correctly classified "
        f"CIFAR-10 test images (not {args.target})\n"
    )
    print("| method | s / step | speed-up | targeted success (fragility evaluator) [95% CI] |")
    print("| --- | --- | --- | --- |")
    for name, sec, s, lo_, hi_, n in rows:
        print(f"| {name} | {sec:.3f} | {t_art / sec:.2f}x | {s:.1%} [{lo_:.1%}, {hi_:.1%}] (n={n}) |")
    print(f"\nART patch under ART's own apply_patch(scale={math.sqrt(args.area):.3f}): {k / m:.1%} [{lo:.1%}, {hi:.1%}] (n={m})")


if __name__ == "__main__":
    main()
