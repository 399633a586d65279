"""How many queries each candidate order of the one-pixel walk (``sparse_rs`` k = 1) needs, read off
every candidate's margin computed once.

For each image of a slice of the one-pixel benchmark's list (the seeded shared CIFAR-10 test
permutation's correctly classified images, CIFAR ResNet-20; by default images 101-160, held out from
``bench_sparse_rs.py``'s first 100) the margin of all ``H * W * 8`` single corner-coloured pixels is
computed once (cached in ``--cache``). Each order of ``attacks/sparse_rs.py`` is then replayed on
those margins: an image's queries are the place of its first fooling candidate in the order (the
clean pixel's own colours skipped, as the attack skips them), a complete walk otherwise. The walk's
grouping of candidates per model call (up to 2% sent after a success) is left out, so these counts
are what the order alone decides. Orders are chosen here, on held-out images, before they meet the
benchmark's.

    python benchmarks/peers/k1_order_study.py --start 100 --n 60 --threads 2 --cache results/k1_margins_101_160.pt
    python benchmarks/peers/k1_order_study.py --start 0 --n 100 --cache results/k1_margins_1_100.pt   # the benchmark's images
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import cifar_resnet, cifar_test, correct_subset, shared_dir

from fragility.attacks.sparse_rs import corner_colours, margin, walk_order
from fragility.rng import SampleRNG, content_keys

BUDGETS = (500, 1000, 1500, 2000, 3000, 5000)
# (order, second-phase position rank, colour order): the attack's orders and the rules tried for them
VARIANTS = (
    ("random", "signed", "index"),
    ("guided", "signed", "index"),
    ("guided", "spread", "index"),
    ("guided", "signed", "far"),
    ("guided", "spread", "far"),
)


def all_margins(model, x: torch.Tensor, y: torch.Tensor, chunk: int, lazy: bool) -> torch.Tensor:
    """(n, H*W*2^C) margins of every single-pixel corner candidate (index ``position * 2^C + corner``,
    the attack's), through the model's BatchNorm-folded copy where it has one (the attack's
    candidates go there too). ``lazy``: the far-corner probes first (the guided order's first phase),
    then every candidate only of the images that no probe fools; the others' remaining candidates are
    left at +inf (never fooling), which decides no guided count: such an image stops in the first phase."""
    n, c, h, w = x.shape
    corners = corner_colours(c, x.device)
    ncol, npos = len(corners), h * w
    pixel = x.permute(0, 2, 3, 1).reshape(n, npos, c)
    far = ((1 - pixel.round()) * 2 ** torch.arange(c)).sum(-1).long()
    probes = torch.arange(npos)[None] * ncol + far  # (n, npos)
    out = torch.full((n, npos * ncol), torch.inf)
    fast = bool(getattr(model, "has_folded_copy", False))
    t0, asked = time.perf_counter(), 0

    def ask(i: int, cands: torch.Tensor) -> None:
        nonlocal asked
        for s in range(0, len(cands), chunk):
            j = cands[s : s + chunk]
            xs = x[i].expand(len(j), c, h, w).clone()
            xs.permute(0, 2, 3, 1)[torch.arange(len(j)), (j // ncol) // w, (j // ncol) % w] = corners[j % ncol]
            logits = model(xs, inference=fast) if fast else model(xs)
            out[i, j] = margin(logits, y[i].expand(len(j)), False)[0]
        asked += len(cands)

    with torch.inference_mode():
        for i in range(n):
            if lazy:
                ask(i, probes[i])
                if (out[i, probes[i]] < 0).any():
                    continue
            ask(
                i,
                torch.arange(npos * ncol)
                if not lazy
                else torch.tensor(sorted(set(range(npos * ncol)) - set(probes[i].tolist()))),
            )
            rate = asked / (time.perf_counter() - t0)
            print(f"\rmargins: {i + 1}/{n} images, {rate:,.0f} candidates/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def replay(order: torch.Tensor, fooled: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Queries per image for a walk in ``order`` (n, total): the 1-based place of the first fooling
    candidate among those asked (the clean pixel's own colours are not asked), else all asked."""
    asked = ~same.gather(1, order)
    hit = fooled.gather(1, order) & asked
    count = asked.long().cumsum(1)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((len(order),), -1))
    total = asked.sum(1)
    return torch.where(first >= 0, count.gather(1, first.clamp_min(0)[:, None]).squeeze(1), total)


def table(x: torch.Tensor, margins: torch.Tensor, seed: int, lazy: bool) -> str:
    n, c = x.shape[:2]
    corners = corner_colours(c, x.device)
    ncol = len(corners)
    npos = margins.shape[1] // ncol
    pixel = x.permute(0, 2, 3, 1).reshape(n, npos, c)
    same = (pixel[:, :, None] == corners[None, None]).all(-1).reshape(n, -1)
    fooled = margins < 0
    flippable = fooled.any(1)
    rows = [
        f"{int(flippable.sum())}/{n} images have a fooling candidate (the exhaustive bound)",
        "",
        "| order | all flippable within | flippable, mean queries to flip | median | "
        + " | ".join(f"fooled @ {b:,}" for b in BUDGETS)
        + " | mean queries, complete walk |",
        "|---|---|---|---|" + "---|" * len(BUDGETS) + "---|",
    ]
    for name, rank, colours in VARIANTS:
        if lazy and name == "random":
            continue  # its count needs every candidate of every image
        rng = SampleRNG(content_keys(x, seed))  # the attack's per-image streams: the same random order
        order = walk_order(name, x, rng, lambda cands: margins.gather(1, cands), rank=rank, colours=colours)
        q = replay(order, fooled, same).float()
        qf = q[flippable]
        at = [int((flippable & (q <= b)).sum()) for b in BUDGETS]
        rows.append(
            f"| `{name}`{'' if name == 'random' else f', {rank}, {colours}'} | {int(qf.max()):,} | {float(qf.mean()):,.0f} | {float(qf.median()):,.0f} | "
            + " | ".join(str(a) for a in at)
            + f" | {float(q.mean()):,.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start", type=int, default=100, help="skip this many of the list (the benchmark uses the first 100)")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=512, help="candidates per model call")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--shared", default=None)
    ap.add_argument(
        "--lazy",
        action="store_true",
        help="every candidate only for images the first phase does not fool (faster; no random-order row)",
    )
    ap.add_argument("--cache", default=None, help="keep the margins here (a torch file of tensors) and reuse them")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = shared_dir(args.shared)
    model = cifar_resnet(shared, 20)
    x, y, ids = correct_subset(model, cifar_test(shared, None, args.seed), args.start + args.n)
    x, y, ids = x[args.start :], y[args.start :], ids[args.start :]
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if not torch.equal(saved["ids"], ids):
            sys.exit(f"k1_order_study: {cache} holds other images; remove it or pass another --cache")
        margins, lazy = saved["margins"], bool(saved.get("lazy", False))
    else:
        margins, lazy = all_margins(model, x, y, args.chunk, args.lazy), args.lazy
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"ids": ids, "margins": margins, "lazy": lazy}, cache)
    print(
        f"# k = 1 candidate orders: resnet20, images {args.start + 1}-{args.start + len(x)} of the one-pixel "
        f"benchmark's list (seed {args.seed}), {margins.shape[1]:,} candidates each, torch {torch.__version__}"
    )
    print("# python benchmarks/peers/k1_order_study.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(table(x, margins, args.seed, lazy))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
