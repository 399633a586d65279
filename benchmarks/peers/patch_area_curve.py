"""Success of an adversarial patch versus its area on held-out CIFAR-10, and its transfer to another net.

Takes a patch trained by the runner (``attack.save=...``), scores it on ``--n-test`` held-out
test images (correctly classified, not of the target class) pasted at each area, then fine-tunes it
for each area for ``--steps`` EOT steps on train.npz (cheap: the 10% patch is a good start) and
scores again; the same patch is also scored on ``--transfer-depth`` (no training there). Prints a
table, writes a PNG curve and a CSV.

    python benchmarks/peers/patch_area_curve.py --shared ../shared --load results/truck10_resnet20.png \\
        --steps 200 --out docs/img/patch_area_curve.png
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", str(Path(__file__).resolve().parents[3] / "shared")))
    ap.add_argument("--load", required=True, help="a saved patch (.png with its .json)")
    ap.add_argument("--areas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.15, 0.2, 0.25])
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per area (0: skip)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--transfer-depth", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="patch_area_curve.png")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fragility.attacks.patch import Patch
    from fragility.benchmarks.figures import score_areas
    from fragility.datasets import Npz
    from fragility.models.cifar_resnet import CIFAR10_CLASSES, build

    shared = Path(args.shared)
    ckpts = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th"}
    models = {d: build(d, str(shared / "models/cifar10" / ckpts[d])).eval() for d in (args.depth, args.transfer_depth)}
    base = Patch(load=args.load)
    test = Npz(str(shared / "data/cifar10/test.npz"), CIFAR10_CLASSES, "cifar10").load(args.n_test, args.seed)
    train = Npz(str(shared / "data/cifar10/train.npz"), CIFAR10_CLASSES, "cifar10").load(None, args.seed + 1)

    def held_out(model):
        x = test.images()
        with torch.inference_mode():
            ok = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]) == test.y
        return x[ok], test.y[ok]

    tables = {}
    x, y = held_out(models[args.depth])
    tables["same patch"] = score_areas(base, models[args.depth], x, y, args.areas)
    xt, yt = held_out(models[args.transfer_depth])
    tables[f"transfer to resnet{args.transfer_depth}"] = score_areas(base, models[args.transfer_depth], xt, yt, args.areas)
    if args.steps:
        rows, t0 = [], time.perf_counter()
        for a in args.areas:
            tuned = Patch(
                target=base.target,
                area=a,
                shape=base.shape,
                rotation=base.rotation,
                scale=base.scale,
                steps=args.steps,
                batch_size=base.info.get("batch_size", 64),
                lr=base.info.get("lr", 0.05),
                seed=args.seed,
            )
            tuned.fit(models[args.depth], train, init=base.patch)
            rows.append(score_areas(tuned, models[args.depth], x, y, [a]))
        tables[f"fine-tuned per area (+{args.steps} steps)"] = pd.concat(rows, ignore_index=True)
        print(f"fine-tuning: {time.perf_counter() - t0:.0f}s for {len(args.areas)} areas, {args.threads} thread(s)")

    print(
        f"\npatch -> {base.target} ({base.shape}, trained at {base.area:.0%} on {base.info.get('model')} / "
        f"{base.info.get('train_data')}, {base.info.get('steps')} steps); held-out: CIFAR-10 test, {args.n_test} drawn, "
        f"correctly classified, not {base.target}\n"
    )
    names = list(tables)
    print("| area | " + " | ".join(f"{n}: targeted [95% CI] / untargeted" for n in names) + " |")
    print("| --- " * (len(names) + 1) + "|")
    for i, a in enumerate(args.areas):
        cells = []
        for n in names:
            r = tables[n].iloc[i]
            cells.append(
                f"{r.targeted:.1%} [{r.targeted_ci_low:.1%}, {r.targeted_ci_high:.1%}] / {r.untargeted:.1%} (n={int(r.n)})"
            )
        print(f"| {a:.0%} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    pd.concat([t.assign(curve=n) for n, t in tables.items()]).to_csv(out.with_suffix(".csv"), index=False)
    _plot(tables, out, f"patch -> {base.target}, resnet{args.depth} (held-out CIFAR-10 test)")
    print(f"\nwrote {out} and {out.with_suffix('.csv')}")


def _plot(tables, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for (name, df), m in zip(tables.items(), "os^D"):
        x = 100 * df["area"]
        ax.plot(x, 100 * df["targeted"], marker=m, label=f"{name} (targeted)")
        ax.fill_between(x, 100 * df["targeted_ci_low"], 100 * df["targeted_ci_high"], alpha=0.15)
    ax.set_xlabel("patch area (% of image)")
    ax.set_ylabel("targeted success (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
