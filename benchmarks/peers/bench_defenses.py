"""Defenses scored plain and adaptive on CIFAR-10 ResNet-20 (the obfuscated-gradients table).

For each defense the runner scores PGD twice, ``standard`` (the gradient the defense exposes) and
``adaptive`` (BPDA for jpeg / bit_depth / median, EOT for gaussian_noise); everything goes through
``run(cfg)`` into one results store, so the defense leaderboard of ``--results`` shows the same
numbers. Optional rows: an adversarially trained checkpoint (``--checkpoint``, PGD-20 as well) and
randomized smoothing certified accuracy on a noise-trained base model (``--smoothing-checkpoint``).

Usage (1 thread through the CPU slot)::

    python benchmarks/peers/bench_defenses.py --n 500 \\
        --checkpoint results/train/resnet20_fgsm_rs/model.pt \\
        --smoothing-checkpoint results/train/resnet20_gaussian/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    import fragility.benchmarks.config  # noqa: F401  (frac resolver)

    with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="test images (seeded subset of test.npz)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps for the defense table")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--eot", type=int, default=8, help="EOT draws per gradient (gaussian_noise)")
    ap.add_argument("--sigma", type=float, default=0.02, help="gaussian_noise sigma (resnet20 keeps most accuracy at 0.02)")
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--results", default=str(REPO / "results" / "bench_defenses"))
    ap.add_argument(
        "--results-db", default=None, help="a SQLAlchemy URL for the results store (results_db=; default: SQLite in --results)"
    )
    ap.add_argument("--checkpoint", default=None, help="adversarially trained resnet20 state dict (adds PGD-20 rows)")
    ap.add_argument("--smoothing-checkpoint", default=None, help="noise-trained resnet20 for randomized smoothing")
    ap.add_argument("--smoothing-sigma", type=float, default=0.25)
    ap.add_argument("--smoothing-n", type=int, default=200, help="images to certify")
    ap.add_argument("--smoothing-votes", type=int, default=1000, help="Cohen's n (n0 = 100)")
    ap.add_argument(
        "--only",
        default=None,
        help="comma list of defenses to run (none,jpeg,bit_depth,median,gaussian_noise,checkpoint,smoothing)",
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    model = ["model=cifar_resnet", f"model.checkpoint={shared / 'models/cifar10/resnet20-12fca82f.th'}"]
    data = ["dataset=cifar10_npz", f"dataset.path={shared / 'data/cifar10/test.npz'}"]
    base = [f"results_dir={args.results}", "logger=none", "progress=false", "batch_size=250", "device=cpu", *model, *data]
    if args.results_db:
        base.append(f"results_db={args.results_db}")
    pgd = ["attack=pgd", f"attack.eps={args.eps}", f"attack.steps={args.steps}"]
    pgd20 = ["attack=pgd", f"attack.eps={args.eps}", "attack.steps=20"]
    jobs: list[tuple[str, list[str]]] = [
        ("none", [*pgd]),
        ("jpeg", [*pgd, "defense=jpeg", "defense.quality=75"]),
        ("bit_depth", [*pgd, "defense=bit_depth", "defense.bits=4"]),
        ("median", [*pgd, "defense=median", "defense.kernel=3"]),
        ("median", [*pgd, "defense=median", "defense.kernel=3", "defense.exact_gradient=false"]),
        ("gaussian_noise", [*pgd, "defense=gaussian_noise", f"defense.sigma={args.sigma}", f"defense.eot_samples={args.eot}"]),
    ]
    if args.checkpoint:
        jobs += [
            ("none", [*pgd20]),
            ("checkpoint", [*pgd, "defense=checkpoint", f"defense.path={args.checkpoint}"]),
            ("checkpoint", [*pgd20, "defense=checkpoint", f"defense.path={args.checkpoint}"]),
        ]
    if args.smoothing_checkpoint:
        jobs.append(
            (
                "smoothing",
                [
                    *pgd,
                    "defense=smoothing",
                    f"defense.sigma={args.smoothing_sigma}",
                    f"defense.n={args.smoothing_votes}",
                    "defense.eot_samples=4",
                    f"model.checkpoint={args.smoothing_checkpoint}",
                ],
            )
        )
    only = set(args.only.split(",")) if args.only else None
    from fragility.benchmarks.runner import run
    from fragility.benchmarks.store import ResultStore

    print(
        f"# bench_defenses: resnet20, CIFAR-10 test.npz, n={args.n}, PGD-{args.steps} eps {args.eps}, {args.threads} thread(s)",
        flush=True,
    )
    for name, ov in jobs:
        if only and name not in only:
            continue
        n = args.smoothing_n if name == "smoothing" else args.n
        t0 = time.perf_counter()
        run(compose([*base, f"n_samples={n}", *ov]))
        print(
            f"# {name} {' '.join(o for o in ov if o.startswith(('attack.steps', 'defense.')))} done in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )

    recs = ResultStore.for_config(compose(base)).records()  # the store the runs wrote to (results_db= when given)
    rows = {}
    for r in recs:
        key = (r.defense, r.params)
        row = rows.setdefault(key, {"defense": r.defense, "attack": f"{r.attack} {r.params}", "n": r.n, "clean": r.clean_acc})
        row[r.variant] = r.robust_acc
        row[f"{r.variant}_s"] = r.seconds
        extra = json.loads(r.extra_json or "{}")
        if r.variant == "adaptive":
            row["how"] = extra.get("adaptive", "")
        for k, v in extra.items():
            if k.startswith("certified_acc@") or k == "abstain_rate":
                row[k] = v
    print(
        "\n| model | defense | attack | n | clean acc | robust acc, plain attack | robust acc, adaptive (how) | reported (worst) | seconds plain / adaptive (1 thread) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows.values(), key=lambda r: (r["attack"], r["defense"])):
        ad = row.get("adaptive")
        worst = min(v for v in (row.get("standard"), ad) if v is not None)
        ad_s = f"{ad:.1%} ({row.get('how', '')})" if ad is not None else "same (differentiable, deterministic)"
        secs = (
            f"{row.get('standard_s', 0):.0f} / {row['adaptive_s']:.0f}" if ad is not None else f"{row.get('standard_s', 0):.0f}"
        )
        print(
            f"| cifar_resnet20 | {row['defense']} | {row['attack']} | {row['n']} | {row['clean']:.1%} | {row.get('standard', float('nan')):.1%} | {ad_s} | {worst:.1%} | {secs} |"
        )
    cert = [r for r in rows.values() if "abstain_rate" in r]
    if cert:
        print("\n| defense | n | certified acc r=0 | r=0.25 | r=0.5 | abstain rate |")
        print("|---|---|---|---|---|---|")
        for r in cert:
            print(
                f"| {r['defense']} | {r['n']} | {r.get('certified_acc@0', float('nan')):.1%} | {r.get('certified_acc@0.25', float('nan')):.1%} | "
                f"{r.get('certified_acc@0.5', float('nan')):.1%} | {r['abstain_rate']:.1%} |"
            )
    print(f"\nleaderboards: {args.results}/defense_leaderboard.md, {args.results}/leaderboard.md")


if __name__ == "__main__":
    sys.exit(main())
