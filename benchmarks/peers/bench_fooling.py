"""Numbers for fooling images, priors and filter visualization (issue 6), in one run.

1. Fooling: steps to reach 99.99% confidence, per target class, from seeded noise, on the shared
   ResNet-20 and on the digits CNN (``--seeds`` images per class, at most ``--steps`` steps).
2. Priors: class visualizations on ResNet-20 with each Yosinski preset and with the same steps and
   learning rate but no priors: mean total variation, share that ResNet-20 labels as the class, and
   share that ResNet-32 labels as the class (transfer), against the unregularized fooling images of 1.
3. Filter visualization: a channel's mean activation for the optimized image against random uniform
   images (mean, std, z-score), on ResNet-20 (pretrained) and on VGG-16 / Inception-v3 (random
   weights: no downloads).

No peer library makes fooling images or Yosinski-style visualizations, so there is no peer column;
times are wall-clock seconds on ``--threads`` threads. Pictures go to ``--img-dir`` when given.

    python benchmarks/peers/bench_fooling.py --shared ../shared --img-dir docs/img
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def fooling_table(model, seeds: int, steps: int) -> tuple[list[list], torch.Tensor, torch.Tensor, float]:
    from fragility.attacks.fooling import Fooling

    k = model.num_classes
    n = k * seeds
    t0 = time.perf_counter()
    res = Fooling(target="all", steps=steps)(
        model, torch.zeros(n, *model.input_size), torch.zeros(n, dtype=torch.long), keys=torch.arange(n)
    )
    sec = time.perf_counter() - t0
    rows = []
    st = res.extras["steps"]
    for c in range(k):
        m = res.targets == c
        ok = res.success[m]
        s = st[m][ok].float()
        rows.append(
            [
                model.class_names[c],
                f"{int(ok.sum())}/{int(m.sum())}",
                f"{s.median():.0f}" if len(s) else "-",
                f"{s.max():.0f}" if len(s) else "-",
                f"{res.extras['target_conf'][m].min():.6f}",
            ]
        )
    return rows, res.adv, res.targets, sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", str(Path(__file__).resolve().parents[3] / "shared")))
    ap.add_argument("--seeds", type=int, default=10, help="fooling images per class")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--vis-seeds", type=int, default=2, help="class visualizations per class and setting")
    ap.add_argument("--presets", default="yosinski1,yosinski2,yosinski3,yosinski4")
    ap.add_argument("--filter-steps", type=int, default=100)
    ap.add_argument("--imagenet-steps", type=int, default=10)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: fooling,priors,filters,imagenet")
    ap.add_argument("--img-dir", default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    from tabulate import tabulate

    from fragility.attacks.priors import preset, total_variation
    from fragility.benchmarks.figures import image_grid
    from fragility.benchmarks.visualize import channel_activation, find_layer, visualize_classes, visualize_filters
    from fragility.models import cifar_resnet, digits_cnn

    shared = Path(args.shared)
    r20 = cifar_resnet.build(20, str(shared / "models/cifar10/resnet20-12fca82f.th")).eval()
    r32 = cifar_resnet.build(32, str(shared / "models/cifar10/resnet32-d509ac18.th")).eval()
    img = Path(args.img_dir) if args.img_dir else None
    print(f"# bench_fooling ({args.threads} thread(s), torch {torch.__version__})\n")

    fool_adv = fool_t = None
    if "fooling" not in skip:
        for name, model in (("resnet20", r20), ("digits_cnn", digits_cnn.build())):
            rows, adv, t, sec = fooling_table(model, args.seeds, args.steps)
            print(
                f"## Fooling from seeded noise: {name}, {args.seeds} images per class, target 99.99%, <= {args.steps} steps ({sec:.1f} s)\n"
            )
            print(tabulate(rows, headers=["target", "reached", "median steps", "max steps", "min conf"], tablefmt="github"), "\n")
            if name == "resnet20":
                fool_adv, fool_t = adv, t
                if img:
                    with torch.no_grad():
                        p = torch.softmax(r20(adv[:10]), 1)
                    image_grid(
                        adv[:10],
                        [f"{r20.class_names[int(c)]}\n{float(p[i, c]):.4%}" for i, c in enumerate(t[:10])],
                        img / "fooling_resnet20.png",
                        title="ResNet-20 fooling images from seeded noise (>= 99.99%)",
                    )

    if "priors" not in skip:
        rows = []
        if fool_adv is not None:
            with torch.no_grad():
                a20 = (r20(fool_adv).argmax(1) == fool_t).float().mean()
                a32 = (r32(fool_adv).argmax(1) == fool_t).float().mean()
            rows.append(
                [
                    "fooling images (no prior, sign 2/255)",
                    len(fool_adv),
                    f"{total_variation(fool_adv).mean():.4f}",
                    f"{a20:.0%}",
                    f"{a32:.0%}",
                    "-",
                ]
            )
            from fragility.attacks.fooling import Fooling

            for name in ("yosinski1", "yosinski3"):  # the same fooling attack with a preset's priors
                t0 = time.perf_counter()
                n = len(fool_adv)
                res = Fooling(target="all", steps=args.steps, prior=name)(
                    r20, torch.zeros(n, 3, 32, 32), torch.zeros(n, dtype=torch.long), keys=torch.arange(n)
                )
                with torch.no_grad():
                    a32 = (r32(res.adv).argmax(1) == res.targets).float().mean()
                rows.append(
                    [
                        f"fooling images + {name} priors (99.99% reached: {res.success.float().mean():.0%})",
                        n,
                        f"{total_variation(res.adv).mean():.4f}",
                        f"{(res.pred == res.targets).float().mean():.0%}",
                        f"{a32:.0%}",
                        f"{time.perf_counter() - t0:.0f}",
                    ]
                )
        shown: list = []
        for name in filter(None, args.presets.split(",")):
            p = preset(name)
            for with_priors in (True, False):
                t0 = time.perf_counter()
                ims, ts = [], []
                for s in range(args.vis_seeds):
                    v = visualize_classes(r20, "all", prior=name, priors=None if with_priors else [], seed=s)
                    ims.append(v.images)
                    ts.append(torch.tensor(v.units))
                x, t = torch.cat(ims), torch.cat(ts)
                with torch.no_grad():
                    a20 = (r20(x).argmax(1) == t).float().mean()
                    a32 = (r32(x).argmax(1) == t).float().mean()
                label = f"{name} ({p.steps} steps, {p.policy})" + ("" if with_priors else ", priors off")
                rows.append(
                    [
                        label,
                        len(x),
                        f"{total_variation(x).mean():.4f}",
                        f"{a20:.0%}",
                        f"{a32:.0%}",
                        f"{time.perf_counter() - t0:.0f}",
                    ]
                )
                print("  ", rows[-1], flush=True)
                if name == "yosinski2":
                    shown.append((x[:10], [("" if with_priors else "no prior: ") + r20.class_names[int(c)] for c in t[:10]]))
        if img and shown:
            image_grid(
                torch.cat([x for x, _ in shown]),
                [t for _, ts in shown for t in ts],
                img / "class_vis_resnet20_yosinski2.png",
                title="ResNet-20 class visualizations: preset yosinski2 (top) and the same steps without priors (bottom); "
                "each image minus its mean colour, stretched",
                stretch=True,
            )
        print("\n## Priors: class visualization on ResNet-20, transfer to ResNet-32\n")
        print(
            tabulate(
                rows,
                headers=["images", "n", "mean TV", "ResNet-20 says target", "ResNet-32 says target", "seconds"],
                tablefmt="github",
            ),
            "\n",
        )

    if "filters" not in skip:
        rows = []
        g = torch.Generator().manual_seed(123)
        noise = torch.rand(64, 3, 32, 32, generator=g)
        chans = list(range(8))
        grid = []
        for layer in ("conv1", "layer1.2.conv2", "layer2.2.conv2", "layer3.2.conv2"):
            t0 = time.perf_counter()
            v = visualize_filters(r20, layer, chans, steps=args.filter_steps, lr=0.05)
            mod = find_layer(r20, layer)
            with torch.no_grad():
                r = torch.stack([channel_activation(r20, mod, noise, torch.full((64,), c)) for c in chans])
            z = (v.score - r.mean(1)) / r.std(1)
            rows.append(
                [
                    "resnet20 (pretrained)",
                    layer,
                    len(chans),
                    f"{v.score.mean():.3g}",
                    f"{r.mean():.3g}",
                    f"{z.min():.1f}",
                    f"{z.median():.1f}",
                    f"{time.perf_counter() - t0:.1f}",
                ]
            )
            grid.append((layer, v))
        if img:
            ims = torch.cat([v.images for _, v in grid])
            titles = [f"{layer}[{c}]" for layer, v in grid for c in v.units]
            image_grid(
                ims,
                titles,
                img / "filter_vis_resnet20.png",
                cols=8,
                title="ResNet-20 filter visualization, 8 channels of 4 layers (as optimized, no priors)",
            )
        if "imagenet" not in skip:
            from fragility.models.torchvision_models import build as tv_build

            for arch, layer in (("vgg16", "features.28"), ("inception_v3", "Mixed_7c.branch_pool.conv")):
                torch.manual_seed(0)
                m = tv_build(arch)
                t0 = time.perf_counter()
                v = visualize_filters(m, layer, [0, 1], steps=args.imagenet_steps, lr=0.05, init="uniform")
                mod = find_layer(m, layer)
                gi = torch.Generator().manual_seed(7)
                with torch.no_grad():
                    r = torch.stack(
                        [
                            channel_activation(m, mod, torch.rand(8, *m.input_size, generator=gi), torch.full((8,), c))
                            for c in (0, 1)
                        ]
                    )
                z = (v.score - r.mean(1)) / r.std(1)
                rows.append(
                    [
                        f"{arch} (random weights)",
                        layer,
                        2,
                        f"{v.score.mean():.3g}",
                        f"{r.mean():.3g}",
                        f"{z.min():.1f}",
                        f"{z.median():.1f}",
                        f"{time.perf_counter() - t0:.1f}",
                    ]
                )
                print("  ", rows[-1], flush=True)
        print(
            f"## Filter visualization: optimized image vs random uniform images ({args.filter_steps} steps on ResNet-20, {args.imagenet_steps} on the ImageNet nets; rms step)\n"
        )
        print(
            tabulate(
                rows,
                headers=[
                    "model",
                    "layer",
                    "channels",
                    "mean act (optimized)",
                    "mean act (random)",
                    "min z",
                    "median z",
                    "seconds",
                ],
                tablefmt="github",
            )
        )


if __name__ == "__main__":
    main()
