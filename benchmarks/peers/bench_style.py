"""Shape-vs-texture bias and stylization robustness of the project's models (issue 16).

Everything goes through ``fragility-style`` (so every number is a record in one results store,
``--out``/results.sqlite, with ``shape_bias`` in its ``extra_json``):

1. digits: a cue-conflict set of ``--digits-n`` test digits (digits CNN features, the app's default
   transfer settings), scored by the digits CNN and by an FGSM-RS adversarially trained digits CNN
   (``fragility-train``, trained here if missing); stylization curves of both.
2. CIFAR-10: a cue-conflict set of ``--cifar-n`` shared test images with textures from ``train.npz``,
   stylized with **resnet32** features (``--cifar-steps`` Adam steps, style weight ``--cifar-style-weight``),
   scored by resnet20, resnet32 and the adversarially trained resnet20 (``--adv-resnet20``, default:
   the newest ``results/train/*resnet20*/model.pt`` or ``~/.cache/fragility/**/resnet20*.pt``);
   stylization curves of the three at ``--cifar-curve-n`` images.
3. A summary (shape bias, Wilson interval, decisions, the style-transfer quality check, seconds per
   image) as JSON and Markdown under ``--out``; pictures copied to ``--figures`` when given.

Run::

    nice -n 10 python benchmarks/peers/bench_style.py --threads 1 --out results/style_bench --figures docs/img
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_dir

from fragility.attacks.shape_bias import read_meta
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.style import curve_figure

PARTS = ("digits", "cifar", "digits_adv", "cifar_curve", "digits_curve", "timing")
CIFAR_MEAN = "[0.485,0.456,0.406]"
CIFAR_STD = "[0.229,0.224,0.225]"


def sh(args: list[str], log) -> None:
    print("$ " + " ".join(args), flush=True)
    log.write("$ " + " ".join(args) + "\n")
    log.flush()
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(p.stdout + f"[{time.perf_counter() - t0:.0f}s, exit {p.returncode}]\n")
    log.flush()
    for line in p.stdout.splitlines():
        if line.startswith("[fragility-style]") or "error" in line.lower():
            print("  " + line, flush=True)
    if p.returncode:
        raise SystemExit(f"bench_style: command failed (exit {p.returncode}); see the log")


def find_adv_resnet20(given: str | None) -> Path | None:
    if given:
        return Path(given)
    found = sorted((REPO / "results" / "train").glob("*resnet20*/model.pt"), key=lambda p: p.stat().st_mtime)
    cache = Path.home() / ".cache" / "fragility"
    found += sorted(cache.glob("**/*resnet20*.pt"), key=lambda p: p.stat().st_mtime) if cache.is_dir() else []
    return found[-1] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/style_bench")
    ap.add_argument("--figures", default=None, help="copy the pictures here (docs/img)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--digits-n", type=int, default=500)
    ap.add_argument("--digits-curve-n", type=int, default=200)
    ap.add_argument("--cifar-n", type=int, default=200)
    ap.add_argument("--cifar-steps", type=int, default=100)
    ap.add_argument("--cifar-style-weight", type=float, default=10.0)
    ap.add_argument("--cifar-curve-n", type=int, default=50)
    ap.add_argument("--adv-resnet20", default=None)
    ap.add_argument("--curve-models", default="r20,r32,adv", help="CIFAR-10 models whose stylization curve is run")
    ap.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)} (default: all, in that order)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the cue-conflict sets")
    args = ap.parse_args()
    out = (REPO / args.out).resolve()
    shutil.rmtree(out / "style", ignore_errors=True) if args.fresh else None
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "bench_style.log", "a")  # noqa: SIM115 (one log for the whole run)
    style = [sys.executable, "-c", "from fragility.benchmarks.style import main; main()"]
    common = [f"results_dir={out}", f"threads={args.threads}", "progress=false", "device=cpu"]

    parts = set(args.parts.split(",")) - {"summary"} if args.parts else set(PARTS)  # summary: tables only
    if parts - set(PARTS):
        raise SystemExit(f"bench_style: unknown parts {sorted(parts - set(PARTS))} (valid: {', '.join(PARTS)})")

    # ---- digits: the digits CNN and an FGSM-RS trained one ---------------------------------------
    dset = out / "style" / "cue_conflict-digits.npz"
    digits = [*common, f"n_samples={args.digits_n}", f"cue_conflict={dset}"]
    adv_digits = out / "train" / "digits_fgsm_rs" / "model.pt"
    adv_digits_model = [
        "model=checkpoint",
        f"model.path={adv_digits}",
        "model.arch=digits_cnn",
        "model.input_size=[1,8,8]",
        "model.mean=[0.31]",
        "model.std=[0.38]",
        "model.name=digits_cnn_fgsm_rs",
    ]
    if "digits" in parts:
        sh([*style, *digits], log)
    # ---- CIFAR-10: resnet20, resnet32, adversarially trained resnet20 ----------------------------
    cset = out / "style" / "cue_conflict-cifar10.npz"
    cifar_timing: list[str] | None = None
    if parts & {"cifar", "cifar_curve", "timing"}:
        shared = shared_dir(args.shared)
        models = shared / "models" / "cifar10"
        r20, r32 = sorted(models.glob("resnet20-*.th"))[0], sorted(models.glob("resnet32-*.th"))[0]
        data = shared / "data" / "cifar10"
        cifar = [
            *common,
            f"n_samples={args.cifar_n}",
            f"cue_conflict={cset}",
            "model@features=cifar_resnet",
            "features.depth=32",
            f"features.checkpoint={r32}",
            "dataset@content=cifar10_npz",
            f"content.path={data / 'test.npz'}",
            f"texture_path={data / 'train.npz'}",
            "texture_n=5000",
            f"steps={args.cifar_steps}",
            f"style_weight={args.cifar_style_weight}",
            "batch_size=50",
        ]
        cifar_models = [
            ["model=cifar_resnet", "model.depth=20", f"model.checkpoint={r20}"],
            ["model=cifar_resnet", "model.depth=32", f"model.checkpoint={r32}"],
        ]
        adv = find_adv_resnet20(args.adv_resnet20)
        if adv is not None and adv.is_file():
            cifar_models.append(
                [
                    "model=checkpoint",
                    f"model.path={adv}",
                    "model.arch=cifar_resnet20",
                    f"model.mean={CIFAR_MEAN}",
                    f"model.std={CIFAR_STD}",
                    "model.name=cifar_resnet20_adv",
                ]
            )
            print(f"adversarially trained resnet20: {adv}", flush=True)
        else:
            print("no adversarially trained resnet20 found (results/train/*resnet20*/model.pt)", flush=True)
        cifar_timing = [c for c in cifar if not c.startswith(("n_samples=", "cue_conflict="))]
        cifar_timing += ["n_samples=20", f"cue_conflict={out / 'style' / 'timing-cifar10.npz'}"]
        if "cifar" in parts:
            for m in cifar_models:
                sh([*style, *cifar, *m], log)
        if "cifar_curve" in parts:
            curve = [c for c in cifar if not c.startswith(("n_samples=", "cue_conflict="))]
            for m in [m for i, m in enumerate(cifar_models) if ("r20", "r32", "adv")[i] in args.curve_models.split(",")]:
                sh([*style, *curve, *m, "mode=curve", f"curve_n={args.cifar_curve_n}", "strengths=[0,0.5,1]"], log)

    if "timing" in parts:  # small sets with the same settings, to time the transfer (CPU seconds are in their meta)
        tset = out / "style" / "timing-digits.npz"
        sh(
            [
                *style,
                *[d for d in digits if not d.startswith(("n_samples=", "cue_conflict="))],
                "n_samples=50",
                f"cue_conflict={tset}",
                "mode=build",
                "rebuild=true",
            ],
            log,
        )
        if cifar_timing:
            sh([*style, *cifar_timing, "mode=build", "rebuild=true"], log)

    if "digits_adv" in parts:
        train = [sys.executable, "-c", "from fragility.benchmarks.train import main; main()", f"out_dir={adv_digits.parent}"]
        sh([*train, "progress=false"], log)  # resumes / returns at once when already trained
        sh([*style, *digits, *adv_digits_model], log)

    if "digits_curve" in parts:
        for m in ([], adv_digits_model):
            sh([*style, *common, "mode=curve", f"curve_n={args.digits_curve_n}", "strengths=[0,0.25,0.5,1]", *m], log)

    # ---- summary ------------------------------------------------------------------------------
    records = ResultStore(out).records()
    rows = []
    for r in records:
        if r.attack != "shape_bias":
            continue
        e = json.loads(r.extra_json)
        if "shape_bias" not in e:  # the runner skips extra_metrics when no image went to the shape class
            print(f"{r.model}: no shape_bias in the record (no image classified by its shape)")
            continue
        rows.append(
            {
                "model": r.model,
                "set": r.dataset,
                "n_images": e["cue_conflict_images"],
                "shape_bias": e["shape_bias"],
                "ci": e["shape_bias_ci"],
                "decisions": e["shape_bias_n"],
                "shape": e["shape_decisions"],
                "texture": e["texture_decisions"],
                "other": e["other_decisions"],
                "config_hash": r.config_hash,
            }
        )
    curves = [
        {
            "model": r.model,
            "dataset": r.dataset,
            "params": r.params,
            "strength": r.eps,
            "n": r.n,
            "clean_acc": r.clean_acc,
            "robust_acc": r.robust_acc,
            "seconds": r.seconds,
        }
        for r in records
        if r.attack == "stylize"
    ]
    sets = {
        p.stem: {
            k: read_meta(p).get(k)
            for k in ("n", "feature_network", "seconds_per_image", "cpu_seconds_per_image", "load_average", "threads", "quality")
        }
        for p in (dset, cset, out / "style" / "timing-digits.npz", out / "style" / "timing-cifar10.npz")
        if p.is_file()
    }
    summary = {"shape_bias": rows, "curves": curves, "sets": sets}
    (out / "style_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [
        "| model | cue-conflict set | shape bias | 95% Wilson CI | shape / texture / other decisions |",
        "|---|---|---:|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci"]
        lines.append(
            f"| {r['model']} | {r['set']} ({r['n_images']}) | {r['shape_bias']:.1%} | [{lo:.1%}, {hi:.1%}] | "
            f"{r['shape']} / {r['texture']} / {r['other']} |"
        )
    lines += [
        "",
        "| set | features | wall s/image (CPU s/image) | median style reduction | share >= 10x | median content loss | p90 content loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in sets.items():
        q = s["quality"] or {}
        lines.append(
            f"| {name} ({s['n']}) | {s['feature_network']} | {s['seconds_per_image']:.3f} ({s.get('cpu_seconds_per_image') or math.nan:.3f}) | "
            f"{q.get('median_style_reduction', math.nan):.1f}x | {q.get('share_style_reduction_ge_10x', math.nan):.0%} | "
            f"{q.get('median_content_loss', math.nan):.3f} | {q.get('p90_content_loss', math.nan):.3f} |"
        )
    lines += ["", "| model | data | strength | n | accuracy |", "|---|---|---:|---:|---:|"]
    for c in sorted(curves, key=lambda c: (c["dataset"], c["model"], c["strength"])):
        lines.append(f"| {c['model']} | {c['dataset']} | {c['strength']:g} | {c['n']} | {c['robust_acc']:.1%} |")
    (out / "style_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figs = {
        "style_curve_digits.png": [r for r in records if r.dataset.startswith("digits")],
        "style_curve_cifar10.png": [r for r in records if not r.dataset.startswith("digits")],
    }
    for name, recs in figs.items():
        if any(r.attack == "stylize" for r in recs):
            curve_figure(recs, out / name)
    if args.figures:
        dst = (REPO / args.figures).resolve()
        for src, name in [
            (dset.with_suffix(".png"), "style_cue_conflict_digits.png"),
            (cset.with_suffix(".png"), "style_cue_conflict_cifar10.png"),
            (out / "style_curve_digits.png", "style_curve_digits.png"),
            (out / "style_curve_cifar10.png", "style_curve_cifar10.png"),
        ]:
            if src.is_file():
                shutil.copyfile(src, dst / name)
                print(f"copied {dst / name}")


if __name__ == "__main__":
    main()
