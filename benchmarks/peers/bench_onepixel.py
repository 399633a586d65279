"""One-pixel attack: fragility vs torchattacks ``OnePixel`` vs ART ``PixelAttack``, one run.

Same seeded sample of correctly classified shared CIFAR-10 test images, CIFAR ResNet-20, Su et
al.'s budget (``--pixels 1 --popsize 400 --maxiter 100``). Prints, per method, success rate with
a 95% Wilson interval, mean queries, seconds per image and queries per second, with ratios to the
faster peer, plus the model's raw forward throughput measured in the same process (so the
attack's queries/s can be read as a fraction of what the model can do at all).

Peers run image by image, alternating (torchattacks on image i, then ART on image i), so a run
cut short still compares them on the same images; each finished image prints a progress line.
Queries are counted by a wrapper around the network that every method calls through, and every
method's output is judged by one function (eval mode, float32, in [0, 1], at most ``--pixels``
changed pixels).

    python benchmarks/peers/bench_onepixel.py --n 100 --threads 2              # the full comparison (~60 min)
    python benchmarks/peers/bench_onepixel.py --n 30 --pixels 3 --peers none --precision bf16
    python benchmarks/peers/bench_onepixel.py --n 3 --maxiter 5                # smoke test

Benchmark extras (never imported by the package): ``pip install torchattacks adversarial-robustness-toolbox``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import Counting, cifar_resnet, cifar_test, correct_subset, eval_mode, shared_dir, sync
from torch import nn

from fragility.attacks.onepixel import OnePixel
from fragility.benchmarks.figures import circled_grid
from fragility.models.cifar_resnet import CIFAR10_CLASSES
from fragility.stats import wilson_interval


def judge(
    model: nn.Module, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Success of every method, decided the same way: ``adv`` in eval mode is misclassified.
    Also the number of changed pixels per image; an output outside [0, 1] or over the pixel budget
    stops the benchmark."""
    adv = adv.detach().float().to(x.device)
    l0 = (adv != x).any(1).flatten(1).sum(1).cpu()
    if adv.min() < 0 or adv.max() > 1:
        raise SystemExit(f"an attack left [0, 1]: range [{float(adv.min())}, {float(adv.max())}]")
    if int(l0.max()) > pixels:
        raise SystemExit(f"an attack changed {int(l0.max())} pixels, over the budget of {pixels}")
    with torch.inference_mode(), eval_mode(model):
        ok = (model(adv).argmax(1) != y).cpu()
    return ok, l0


def throughput(model: nn.Module, batch: int, bf16: bool, seconds: float = 3.0) -> float:
    """Images per second of plain forward passes at ``batch`` images per call."""
    dev = next(model.parameters()).device
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
        sync(dev)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            done += batch
            if done % (50 * batch) == 0:
                sync(dev)  # a GPU queues calls: time what ran, not what was queued
        sync(dev)
    return done / (time.perf_counter() - t0)


def run_fragility(model, x, y, args, precision: str) -> dict:
    net = Counting(model)
    attack = OnePixel(
        pixels=args.pixels,
        popsize=args.popsize,
        maxiter=args.maxiter,
        precision=precision,
        max_batch=args.max_batch,
        strategy=args.strategy,
        mutation=args.mutation,
        loss=args.loss,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    parts = [attack(net, x[s : s + args.batch], y[s : s + args.batch]) for s in range(0, len(x), args.batch)]
    seconds = time.perf_counter() - t0
    queries = torch.cat([p.queries for p in parts])
    gens = torch.cat([p.extras["generations"] for p in parts])
    success, l0 = judge(model, x, torch.cat([p.adv for p in parts]), y, args.pixels)
    own = torch.cat([p.success for p in parts])
    if not torch.equal(own, success):
        print(f"warning: fragility's own success differs from the judged one on {int((own != success).sum())} images", flush=True)
    if args.figure:
        adv = parts[0].adv[:8]
        with torch.inference_mode():
            pa = torch.softmax(model(adv), 1)
            pc = torch.softmax(model(x[:8]), 1)
        cc, cp = pc.max(1)
        ac, ap = pa.max(1)
        circled_grid(
            x[:8],
            adv,
            y[:8],
            cp,
            cc,
            ap,
            ac,
            CIFAR10_CLASSES,
            args.figure,
            title=f"cifar_resnet20 / onepixel {attack.describe()}",
        )
    return {
        "success": success.tolist(),
        "queries": queries.tolist(),
        "seconds": seconds,
        "forward_seconds": net.seconds,
        "forwarded": net.images,
        "generations": gens.tolist(),
        "max_l0": int(l0.max()),
    }


def make_peers(model, args) -> dict:
    peers = {}
    names = [p for p in args.peers.split(",") if p and p != "none"]
    if "torchattacks" in names:
        import torchattacks

        net = Counting(model)
        atk = torchattacks.OnePixel(net, pixels=args.pixels, steps=args.maxiter, popsize=args.popsize, inf_batch=128)
        peers["torchattacks"] = (net, lambda xi, yi, atk=atk: atk(xi, yi))
    if "art" in names:
        from art.attacks.evasion import PixelAttack
        from art.estimators.classification import PyTorchClassifier

        net = Counting(model)
        clf = PyTorchClassifier(
            model=net,
            loss=nn.CrossEntropyLoss(),
            input_shape=(3, 32, 32),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="gpu" if next(model.parameters()).is_cuda else "cpu",
        )
        atk = PixelAttack(clf, th=args.pixels, es=1, max_iter=args.maxiter, targeted=False, verbose=False)
        # ART sizes its population as max(1, 400 // dims) * dims: Su's 400 for 1 pixel; other --popsize
        # values cannot be passed through its API, so the table prints its actual population.

        def art_run(xi, yi, atk=atk):
            return torch.from_numpy(atk.generate(xi.cpu().numpy(), y=yi.cpu().numpy()))

        peers["art"] = (net, art_run)
    return peers


def read_peer_log(path: str, ids: np.ndarray, args) -> tuple[dict[str, dict], str]:
    """Peer results from the progress lines of an earlier run of this script (for a run that was
    stopped before its end): only images that every peer finished, checked against our sample."""
    text = Path(path).read_text()
    head = text.splitlines()[0]
    want = f"pixels={args.pixels} popsize={args.popsize} maxiter={args.maxiter}"
    if want not in head or f"(seed {args.seed})" not in head:
        raise SystemExit(f"{path} was run with other settings: {head}")
    pat = re.compile(r"^\[(\w+)\] (\d+)/\d+ image (\d+): success=(\d) queries=(\d+) \| so far \d+/\d+ \d+%, ([\d.]+) s/image")
    res: dict[str, dict] = {}
    for line in text.splitlines():
        m = pat.match(line)
        if m:
            name, i, img, ok, q, spi = m.groups()
            if int(i) > len(ids):
                continue  # beyond this run's sample: compare on the images both have
            if int(img) != int(ids[int(i) - 1]):
                raise SystemExit(f"{path}: image {i} is {img}, this run's is {ids[int(i) - 1]}")
            r = res.setdefault(name, {"success": [], "queries": [], "seconds": 0.0, "forward_seconds": float("nan")})
            r["success"].append(bool(int(ok)))
            r["queries"].append(int(q))
            r["seconds"] = float(spi) * int(i)
    m = min((len(r["success"]) for r in res.values()), default=0)
    for r in res.values():
        if len(r["success"]) > m:  # the last image of a peer that ran ahead of the others
            r["seconds"] *= m / len(r["success"])
            r["success"], r["queries"] = r["success"][:m], r["queries"][:m]
    raw = next((ln for ln in text.splitlines() if ln.startswith("raw throughput")), "")
    return res, raw


def summarize(name: str, r: dict) -> dict:
    n = len(r["success"])
    k = int(sum(r["success"]))
    lo, hi = wilson_interval(k, n)
    q = float(np.mean(r["queries"])) if n else float("nan")
    return {
        "method": name,
        "n": n,
        "k": k,
        "rate": k / n if n else float("nan"),
        "lo": lo,
        "hi": hi,
        "queries": q,
        "s_per_img": r["seconds"] / n if n else float("nan"),
        "qps": sum(r["queries"]) / r["seconds"] if r["seconds"] else float("nan"),
        "fwd_share": r.get("forward_seconds", float("nan")) / r["seconds"] if r["seconds"] else float("nan"),
        "max_l0": r.get("max_l0", -1),
    }


def table(rows: list[dict], raw: dict[str, float]) -> str:
    peers = [r for r in rows if not r["method"].startswith("fragility")]
    ref = min(peers, key=lambda r: r["s_per_img"]) if peers else None
    out = [
        "| method | n | success | 95% Wilson | mean queries | s / image | queries/s | forward share | max pixels changed | "
        + (f"speed-up vs {ref['method']} |" if ref else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if ref else ""),
    ]
    for r in rows:
        line = (
            f"| {r['method']} | {r['n']} | {r['k']}/{r['n']} = {r['rate']:.1%} | [{r['lo']:.1%}, {r['hi']:.1%}] | "
            f"{r['queries']:.0f} | {r['s_per_img']:.2f} | {r['qps']:.0f} | {r['fwd_share']:.0%} | {r['max_l0'] if r['max_l0'] >= 0 else ''} |"
        )
        if ref:
            line += f" {ref['s_per_img'] / r['s_per_img']:.1f}x |" if r["s_per_img"] == r["s_per_img"] else " |"
        out.append(line)
    out.append("")
    out.append(
        "raw resnet20 forward throughput (1 process, same run): " + ", ".join(f"{k} {v:.0f} img/s" for k, v in raw.items())
    )
    for r in rows:
        if r["method"].startswith("fragility") and r["qps"] == r["qps"]:
            key = "bf16" if "bf16" in r["method"] else "fp32"
            best = max(v for k, v in raw.items() if k.startswith(key))
            out.append(f"{r['method']}: queries/s = {r['qps'] / best:.0%} of the best raw {key} throughput")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="correctly classified test images")
    ap.add_argument("--pixels", type=int, default=1)
    ap.add_argument("--popsize", type=int, default=400)
    ap.add_argument("--maxiter", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", default="torchattacks,art", help="comma list of torchattacks, art; or none")
    ap.add_argument("--precision", default="fp32,bf16", help="fragility precisions to run (fp32, bf16)")
    ap.add_argument("--strategy", default="rand1")
    ap.add_argument(
        "--mutation",
        type=lambda v: tuple(float(t) for t in v.split(",")) if "," in v else float(v),
        default=0.5,
        help="DE scale F, or 'low,high' to dither it",
    )
    ap.add_argument("--loss", default="prob", help="fragility's fitness: prob (Su) or margin")
    ap.add_argument("--batch", type=int, default=100, help="images per fragility call")
    ap.add_argument("--max-batch", type=int, default=128, help="candidates per model call (fragility)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--shared", default=None, help="the shared folder (default: $FRAGILITY_SHARED or ../shared)")
    ap.add_argument("--peer-log", default=None, help="take peer results from this earlier run's log instead of running them")
    ap.add_argument("--out", default=None, help="write per-image results as JSON here")
    ap.add_argument("--figure", default=None, help="save the circled-pixel grid of fragility's first 8 images here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    shared = shared_dir(args.shared)
    model = cifar_resnet(shared, 20)
    x, y, ids = correct_subset(model, cifar_test(shared, None, args.seed), args.n)
    ids = ids.numpy()
    print(
        f"# one-pixel benchmark: resnet20, {len(x)} correctly classified CIFAR-10 test images (seed {args.seed}), "
        f"pixels={args.pixels} popsize={args.popsize} maxiter={args.maxiter}, threads={args.threads}, torch {torch.__version__}",
        flush=True,
    )

    raw = {}
    sizes = sorted({32, 128, 512, args.max_batch})
    for bs in sizes:
        raw[f"fp32@{bs}"] = throughput(model, bs, False)
    if "bf16" in args.precision:
        for bs in sizes:
            raw[f"bf16@{bs}"] = throughput(model, bs, True)
    print("raw throughput: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in raw.items()), flush=True)

    results: dict[str, dict] = {}
    rows = []
    for prec in [p for p in args.precision.split(",") if p]:
        r = run_fragility(model, x, y, args, prec)
        if prec == "fp32":
            args.figure = None  # one picture is enough
        results[f"fragility ({prec})"] = r
        rows.append(summarize(f"fragility ({prec})", r))
        print(
            f"[fragility {prec}] success {rows[-1]['k']}/{rows[-1]['n']}, {rows[-1]['s_per_img']:.3f} s/image, "
            f"mean queries {rows[-1]['queries']:.0f}, max changed pixels {r['max_l0']}",
            flush=True,
        )

    peers = make_peers(model, args)
    for name in peers:
        results[name] = {"success": [], "queries": [], "seconds": 0.0, "forward_seconds": 0.0}
    for i in range(len(x) if peers else 0):
        for name, (net, fn) in peers.items():
            r = results[name]
            before_img, before_s = net.images, net.seconds
            t0 = time.perf_counter()
            adv = fn(x[i : i + 1], y[i : i + 1])
            r["seconds"] += time.perf_counter() - t0
            ok_t, l0 = judge(model, x[i : i + 1], adv, y[i : i + 1], args.pixels)
            ok = bool(ok_t[0])
            r["max_l0"] = max(r.get("max_l0", 0), int(l0.max()))
            r["success"].append(ok)
            r["queries"].append(net.images - before_img)
            r["forward_seconds"] += net.seconds - before_s
            s = summarize(name, r)
            print(
                f"[{name}] {i + 1}/{len(x)} image {ids[i]}: success={int(ok)} queries={r['queries'][-1]} "
                f"| so far {s['k']}/{s['n']} {s['rate']:.0%}, {s['s_per_img']:.1f} s/image",
                flush=True,
            )
        if (i + 1) % 10 == 0 and i + 1 < len(x):
            print(table(rows + [summarize(nm, results[nm]) for nm in peers], raw), flush=True)
    rows += [summarize(nm, results[nm]) for nm in peers]
    if args.peer_log:
        logged, raw_line = read_peer_log(args.peer_log, ids, args)
        m = min((len(r["success"]) for r in logged.values()), default=0)
        print(f"\npeers from {args.peer_log} (first {m} of these images; its {raw_line})")
        for name, r in list(results.items()):
            if name.startswith("fragility") and m < len(r["success"]):
                sub = {"success": r["success"][:m], "queries": r["queries"][:m], "seconds": r["seconds"] * m / len(r["success"])}
                row = summarize(f"{name} on the first {m}", sub)
                row["s_per_img"] = row["qps"] = float("nan")  # time is not separable inside one batched call
                rows.append(row)
        results.update(logged)
        rows += [summarize(nm, r) for nm, r in logged.items()]

    print()
    print(table(rows, raw))
    cmd = "python benchmarks/peers/bench_onepixel.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\ncommand: {cmd}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "ids": ids.tolist(), "raw": raw, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
