"""Sparse-RS at one pixel vs differential evolution (fragility ``onepixel``, torchattacks ``OnePixel``),
the exhaustive one-pixel check as the upper bound, Sparse-RS curves for k = 3, 5, 10 pixels and 2x2,
4x4 patches, and the compiled forward; all in one process.

Same images as ``bench_onepixel.py`` (the first ``--n`` correctly classified images of the seeded
shared CIFAR-10 test permutation, CIFAR ResNet-20), its judge (eval mode, float32, [0, 1], at most
the budget's pixels changed) and its counting wrapper, so every method's success and queries are
decided the same way. The DE methods run at Su's budget (population 400, 100 generations).

Order: raw forward throughput (eager); sparse_rs k=1; the exhaustive check; fragility's DE;
torchattacks image by image; then ``torch.compile``: compile time, raw throughput compiled, and
sparse_rs k=1 (and the exhaustive check, and DE on ``--compiled-de-n`` images) on the compiled
model; then the curves (on the compiled model when it compiled: queries do not depend on speed).

    python benchmarks/peers/bench_sparse_rs.py --n 100 --threads 2                      # everything (hours on a 2-core CPU)
    python benchmarks/peers/bench_sparse_rs.py --n 20 --threads 1 --figure docs/img/sparse_rs_curve.png
    python benchmarks/peers/bench_sparse_rs.py --n 3 --maxiter 3 --curve-queries 50 --no-compile   # smoke test
    python benchmarks/peers/bench_sparse_rs.py --n 20 --threads 1 --queries 3000 --fold-compare 1  # BatchNorm-folded copy off vs on

Benchmark extras (never imported by the package): ``pip install torchattacks``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_onepixel import judge, make_peers, run_fragility, summarize, throughput
from common import Counting, cifar_resnet, cifar_test, correct_subset, device_name, pick_device, shared_dir, sync

from fragility.attacks.onepixel import OnePixel
from fragility.attacks.sparse_rs import SparseRS
from fragility.models.compile import compile_model, is_compiled

BATCHES = (1, 32, 100, 128)  # what the attacks send: one image, 32..128 candidates, a batch of 100 images


def run_sparse(model, x, y, attack: SparseRS, batch: int, budget_pixels: int) -> dict:
    """One Sparse-RS configuration on all images: judged success, the attack's own per-image query
    counts (cross-checked against the counting wrapper), seconds."""
    net = Counting(model)
    sync(x.device)
    t0 = time.perf_counter()
    parts = [attack(net, x[s : s + batch], y[s : s + batch]) for s in range(0, len(x), batch)]
    seconds = time.perf_counter() - t0  # the results come back on the CPU: nothing left queued
    queries = torch.cat([p.queries for p in parts])
    success, l0 = judge(model, x, torch.cat([p.adv for p in parts]), y, budget_pixels)
    own = torch.cat([p.success for p in parts])
    if not torch.equal(own, success):
        print(f"warning: sparse_rs's own success differs from the judged one on {int((own != success).sum())} images", flush=True)
    # the wrapper sees the attack's queries plus the base class's final judging forward per image
    if int(queries.sum()) + len(x) != net.images:
        print(f"warning: queries {int(queries.sum())} + {len(x)} != {net.images} images through the wrapper", flush=True)
    return {
        "success": success.tolist(),
        "queries": queries.tolist(),
        "seconds": seconds,
        "forward_seconds": net.seconds,
        "max_l0": int(l0.max()),
    }


def compiled_throughput(args) -> tuple[torch.nn.Module, dict]:
    """A fresh resnet20 compiled: seconds for the first call (compile) and for the next new batch
    size (the recompile with a dynamic batch dimension), then img/s at each batch size."""
    dev = torch.device(args.device)
    model = compile_model(cifar_resnet(shared_dir(args.shared), 20).to(dev))
    info: dict = {}
    xs = torch.rand(max(BATCHES), 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(xs[: BATCHES[-1]])
        sync(dev)
        info["compile_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in BATCHES[:-1]:
            model(xs[:b])
        sync(dev)
        info["recompile_s"] = time.perf_counter() - t0
    info["compiled"] = is_compiled(model)
    info["raw"] = {f"compiled fp32@{b}": throughput(model, b, False) for b in BATCHES}
    return model, info


def raw_interleaved(eager: torch.nn.Module, compiled: torch.nn.Module, rounds: int, seconds: float = 2.0) -> dict[str, float]:
    """Eager and compiled img/s measured in alternation (``rounds`` each, median), so a busy
    machine's changing load affects both alike."""
    got: dict[str, list[float]] = {}
    for _ in range(rounds):
        for b in BATCHES:
            got.setdefault(f"eager fp32@{b}", []).append(throughput(eager, b, False, seconds))
            got.setdefault(f"compiled fp32@{b}", []).append(throughput(compiled, b, False, seconds))
    return {k: float(np.median(v)) for k, v in got.items()}


def fold_compare(model, x, y, args) -> str:
    """Each query-bound attack with ``fold_bn`` off and on (the model's BatchNorm-folded copy for
    candidate scores, successes re-checked on the model), in alternation for ``--fold-compare``
    rounds (median seconds), on the model itself (a ``Counting`` wrapper cannot be traced, so it
    would turn the copy off): the attacks' own query counts, the same judge."""
    skip = set(args.skip.split(","))
    attacks = {  # name: (the --skip part that leaves it out, constructor given fold_bn)
        f"sparse_rs k=1, queries={args.queries}": (
            "k1",
            lambda fold: SparseRS(k=1, queries=args.queries, max_batch=args.max_batch, seed=args.seed, fold_bn=fold),
        ),
        "exhaustive check": (
            "exhaustive",
            lambda fold: SparseRS(k=1, exhaustive=True, max_batch=args.max_batch, seed=args.seed, fold_bn=fold),
        ),
        f"onepixel DE ({args.de_precision}, Su's budget)": (
            "de",
            lambda fold: OnePixel(
                popsize=args.popsize,
                maxiter=args.maxiter,
                precision=args.de_precision,
                max_batch=args.max_batch,
                seed=args.seed,
                fold_bn=fold,
            ),
        ),
    }
    attacks = {name: make for name, (part, make) in attacks.items() if part not in skip}
    got: dict[tuple[str, bool], dict] = {}
    for rnd in range(args.fold_compare):
        for name, make in attacks.items():
            for fold in (False, True):
                attack = make(fold)
                t0 = time.perf_counter()
                parts = [attack(model, x[s : s + args.batch], y[s : s + args.batch]) for s in range(0, len(x), args.batch)]
                seconds = time.perf_counter() - t0
                ok, _ = judge(model, x, torch.cat([p.adv for p in parts]), y, 1)
                q = torch.cat([p.queries for p in parts])
                r = got.setdefault((name, fold), {"seconds": [], "success": ok, "queries": q})
                r["seconds"].append(seconds)
                print(
                    f"[round {rnd + 1}] {name} fold_bn={fold}: {int(ok.sum())}/{len(x)} fooled, "
                    f"mean queries {float(q.float().mean()):,.0f}, {seconds:.1f} s",
                    flush=True,
                )
    out = [
        "| attack | fold_bn | success | mean queries | s / image (median of rounds) | speed-up from the copy | same images fooled |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in attacks:
        off, on = got[(name, False)], got[(name, True)]
        t_off, t_on = float(np.median(off["seconds"])), float(np.median(on["seconds"]))
        differ = int((off["success"] != on["success"]).sum())
        same = "yes" if differ == 0 else f"no: {differ} differ"
        for fold, r, t in ((False, off, t_off), (True, on, t_on)):
            fooled, mean_q = int(r["success"].sum()), float(r["queries"].float().mean())
            speedup, agree = (f"{t_off / t_on:.2f}x", same) if fold else ("", "")
            out.append(
                f"| {name} | {str(fold).lower()} | {fooled}/{len(x)} | {mean_q:,.0f} | {t / len(x):.2f} | {speedup} | {agree} |"
            )
    return "\n".join(out)


def curve(r: dict, grid: np.ndarray) -> np.ndarray:
    """Fraction of images fooled within each query count of ``grid``."""
    q = np.array(r["queries"])
    ok = np.array(r["success"], dtype=bool)
    return np.array([(ok & (q <= g)).mean() for g in grid])


def plot(curves: dict[str, dict], path: str, title: str) -> None:
    """Success within q queries for every method (the DE methods too: their per-image queries are known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qmax = max(max(r["queries"]) for r in curves.values())
    grid = np.unique(np.round(np.logspace(0, np.log10(max(qmax, 2)), 300)).astype(int))
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    for name, r in curves.items():
        style = "--" if "exhaustive" in name else ":" if ("DE" in name or "torchattacks" in name) else "-"
        ax.step(grid, 100 * curve(r, grid), where="post", label=name, lw=1.8, ls=style)
    ax.set_xscale("log")
    ax.set_xlabel("queries per image (log)")
    ax.set_ylabel("images fooled within that many queries (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def figure(results: dict[str, dict], args, n: int) -> None:
    curves = {}
    for name, r in results.items():
        if name.startswith("first") or "compiled" in name:
            continue
        if name.startswith("curve"):
            name = f"{name[6:]}, {args['curve_queries']} queries"
        elif name.startswith("sparse_rs k=1"):
            name = f"sparse_rs k=1, {args['queries']} queries"
        elif name == "exhaustive check":
            name = "exhaustive check (k=1, corner colours)"
        else:
            name += ", Su's budget"
        curves[name] = r
    plot(curves, args["figure"], f"resnet20, {n} correctly classified CIFAR-10 test images: success vs queries")
    print(f"figure: {args['figure']}")


def row(name: str, r: dict, peer: dict | None, bound: dict | None) -> str:
    s = summarize(name, r)
    cells = [
        name,
        str(s["n"]),
        f"{s['k']}/{s['n']} = {s['rate']:.1%}",
        f"[{s['lo']:.1%}, {s['hi']:.1%}]",
        f"{s['queries']:,.0f}",
        f"{float(np.median(r['queries'])):,.0f}",
        f"{s['s_per_img']:.2f}",
        f"{s['qps']:,.0f}",
    ]
    if peer is not None:
        p = summarize("peer", peer)
        cells += [f"{s['queries'] / p['queries']:.2f}", f"{p['s_per_img'] / s['s_per_img']:.1f}x"]
    else:
        cells += ["", ""]
    if bound is not None:
        b = summarize("bound", bound)
        cells.append(f"{(b['rate'] - s['rate']) * 100:+.0f} pts" if name != "exhaustive check" else "(the bound)")
    else:
        cells.append("")
    return "| " + " | ".join(cells) + " |"


def report(results: dict[str, dict], raw: dict, info: dict, args) -> str:
    peer = results.get("torchattacks OnePixel")
    bound = results.get("exhaustive check")
    out = [
        "| method | n | success | 95% Wilson | mean queries | median queries | s / image | queries/s | queries / torchattacks' | speed-up vs torchattacks | success below the exhaustive bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out += [row(name, r, peer, bound) for name, r in results.items() if not name.startswith("curve")]
    out.append("")
    out.append("raw resnet20 forward, same process: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in raw.items()))
    if info:
        out.append(
            f"torch.compile: first call {info['compile_s']:.1f} s, the dynamic-batch recompile {info['recompile_s']:.1f} s "
            f"(compiled={info['compiled']}); rows '(compiled)' include both in their s / image"
        )
    curves = [(n, r) for n, r in results.items() if n.startswith("curve")]
    if curves:
        out += ["", "| curve | success | mean queries | median queries of successes | s / image |", "|---|---|---|---|---|"]
        for name, r in curves:
            s = summarize(name, r)
            q_ok = [q for q, ok in zip(r["queries"], r["success"]) if ok]
            med = f"{float(np.median(q_ok)):,.0f}" if q_ok else ""
            out.append(
                f"| {name[6:]} | {s['k']}/{s['n']} = {s['rate']:.1%} | {s['queries']:,.0f} | {med} | {s['s_per_img']:.2f} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="correctly classified test images (the one-pixel benchmark's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=10000, help="sparse_rs budget per image at k=1")
    ap.add_argument("--popsize", type=int, default=400)
    ap.add_argument("--maxiter", type=int, default=100)
    ap.add_argument("--de-precision", default="bf16", help="fragility DE: fp32 or bf16 (its fastest)")
    ap.add_argument("--peers", default="torchattacks", help="torchattacks or none")
    ap.add_argument("--curve-k", default="3,5,10")
    ap.add_argument("--curve-patch", default="2,4")
    ap.add_argument("--curve-queries", type=int, default=10000)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile part")
    ap.add_argument(
        "--raw-only", type=int, default=0, help="only compare raw eager vs compiled throughput, alternating this many rounds"
    )
    ap.add_argument(
        "--fold-compare",
        type=int,
        default=0,
        help="only compare each attack with fold_bn off and on (the BatchNorm-folded copy), alternating this many rounds",
    )
    ap.add_argument(
        "--skip", default="", help="comma list of parts to leave out: exhaustive, de, curves (--fold-compare: also k1)"
    )
    ap.add_argument(
        "--compiled-de-n", type=int, default=0, help="also run fragility's DE on the compiled model on this many images"
    )
    ap.add_argument("--batch", type=int, default=100, help="images per attack call")
    ap.add_argument("--max-batch", type=int, default=128, help="rows per model call")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--shared", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the model, images and every attack run there")
    ap.add_argument("--figure", default=None, help="save the success-vs-queries picture here")
    ap.add_argument("--out", default=None, help="write per-image results as JSON here")
    ap.add_argument("--replot", default=None, help="only redraw the figure from this --out JSON")
    args = ap.parse_args(argv)
    if args.replot:  # redraw the figure of an earlier run from its --out JSON
        saved = json.loads(Path(args.replot).read_text())
        figure(saved["results"], saved["args"] | ({"figure": args.figure} if args.figure else {}), len(saved["ids"]))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    shared = shared_dir(args.shared)
    dev = pick_device(args.device)
    model = cifar_resnet(shared, 20).to(dev)
    x, y, ids = correct_subset(model, cifar_test(shared, None, args.seed), args.n)
    x, y = x.to(dev), y.to(dev)
    cmd = "python benchmarks/peers/bench_sparse_rs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"# sparse_rs benchmark: resnet20, {len(x)} correctly classified CIFAR-10 test images (seed {args.seed}), "
        f"device {device_name(dev)}, threads={args.threads}, torch {torch.__version__}\n# {cmd}",
        flush=True,
    )
    if args.raw_only:
        cmodel, info = compiled_throughput(args)
        info.pop("raw")
        raw = raw_interleaved(model, cmodel, args.raw_only)
        print(f"compile: {info}")
        for b in BATCHES:
            e, c = raw[f"eager fp32@{b}"], raw[f"compiled fp32@{b}"]
            print(f"batch {b}: eager {e:,.0f} img/s, compiled {c:,.0f} img/s, {c / e:.2f}x")
        return 0
    if args.fold_compare:
        print(fold_compare(model, x, y, args))
        print(f"\ncommand: {cmd}")
        return 0
    raw = {f"eager fp32@{b}": throughput(model, b, False) for b in BATCHES}
    print("raw: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in raw.items()), flush=True)
    results: dict[str, dict] = {}
    info: dict = {}

    def done(name: str, r: dict) -> None:
        results[name] = r
        s = summarize(name, r)
        print(f"[{name}] {s['k']}/{s['n']} fooled, mean queries {s['queries']:,.0f}, {s['s_per_img']:.2f} s/image", flush=True)
        if args.out:
            Path(args.out).write_text(
                json.dumps({"args": vars(args), "ids": ids.tolist(), "raw": raw, "compile": info, "results": results})
            )

    k1 = SparseRS(mode="pixels", k=1, queries=args.queries, max_batch=args.max_batch, seed=args.seed)
    exhaustive = SparseRS(mode="pixels", k=1, exhaustive=True, max_batch=args.max_batch, seed=args.seed)
    done(f"sparse_rs k=1 ({k1.describe()})", run_sparse(model, x, y, k1, args.batch, 1))
    skip = set(args.skip.split(","))
    if "exhaustive" not in skip:
        done("exhaustive check", run_sparse(model, x, y, exhaustive, args.batch, 1))

    de = argparse.Namespace(
        pixels=1,
        popsize=args.popsize,
        maxiter=args.maxiter,
        max_batch=args.max_batch,
        strategy="rand1",
        mutation=0.5,
        loss="prob",
        seed=args.seed,
        batch=args.batch,
        figure=None,
        peers=args.peers,
    )
    if "de" not in skip:
        done(f"fragility onepixel DE ({args.de_precision})", run_fragility(model, x, y, de, args.de_precision))

    peers = make_peers(model, de)
    if "torchattacks" in peers:
        net, fn = peers["torchattacks"]
        r = {"success": [], "queries": [], "seconds": 0.0, "forward_seconds": 0.0, "max_l0": 0}
        for i in range(len(x)):
            before_img, before_s = net.images, net.seconds
            t0 = time.perf_counter()
            adv = fn(x[i : i + 1], y[i : i + 1])
            r["seconds"] += time.perf_counter() - t0
            ok, l0 = judge(model, x[i : i + 1], adv, y[i : i + 1], 1)
            r["success"].append(bool(ok[0]))
            r["queries"].append(net.images - before_img)
            r["forward_seconds"] += net.seconds - before_s
            r["max_l0"] = max(r["max_l0"], int(l0.max()))
            print(f"[torchattacks] {i + 1}/{len(x)} image {ids[i]}: success={int(ok[0])} queries={r['queries'][-1]}", flush=True)
        done("torchattacks OnePixel", r)

    curve_model = model
    if not args.no_compile:
        cmodel, info = compiled_throughput(args)
        raw.update(info.pop("raw"))
        print(
            f"compile: {info}; raw: " + ", ".join(f"{k} {v:,.0f}" for k, v in raw.items() if k.startswith("compiled")), flush=True
        )
        extra = info["compile_s"] + info["recompile_s"]  # stated once, charged to every compiled row
        for name, attack in (("sparse_rs k=1 (compiled)", k1), ("exhaustive check (compiled)", exhaustive)):
            if name.startswith("exhaustive") and "exhaustive" in skip:
                continue
            r = run_sparse(cmodel, x, y, attack, args.batch, 1)
            r["seconds"] += extra
            done(name, r)
        if args.compiled_de_n and "de" not in skip:
            m = args.compiled_de_n
            done(
                f"first {m}: fragility onepixel DE ({args.de_precision})",
                {
                    k: v[:m] if isinstance(v, list) else v
                    for k, v in results[f"fragility onepixel DE ({args.de_precision})"].items()
                }
                | {"seconds": float("nan")},
            )
            r = run_fragility(cmodel, x[:m], y[:m], de, args.de_precision)
            r["seconds"] += extra
            done(f"first {m}: fragility onepixel DE ({args.de_precision}, compiled)", r)
        curve_model = cmodel if info["compiled"] else model

    if "curves" in skip:
        args.curve_k = args.curve_patch = ""
    for k in [int(v) for v in args.curve_k.split(",") if v]:
        a = SparseRS(mode="pixels", k=k, queries=args.curve_queries, max_batch=args.max_batch, seed=args.seed)
        done(f"curve sparse_rs k={k}", run_sparse(curve_model, x, y, a, args.batch, k))
    for s in [int(v) for v in args.curve_patch.split(",") if v]:
        a = SparseRS(mode="patch", size=s, queries=args.curve_queries, max_batch=args.max_batch, seed=args.seed)
        done(f"curve sparse_rs patch {s}x{s}", run_sparse(curve_model, x, y, a, args.batch, s * s))

    print()
    print(report(results, raw, info, args))
    print(f"\ncommand: {cmd}")
    if args.figure:
        figure(results, vars(args), len(x))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
