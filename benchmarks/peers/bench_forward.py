"""Forward and backward speed of the built-in models: NCHW weights vs ``model.channels_last=true``.

Every attack runs at the speed of the model's forward (and, for gradient attacks, backward) pass,
so the layout of the convolution weights is worth measuring where it is chosen: in the model
builders (``models/compile.py``, ``to_channels_last``). Inputs stay NCHW in both columns, as the
attacks pass them. Per model, batch size, precision (fp32, and bf16 autocast as Square and the
one-pixel attacks use it) and pass (``fwd`` under no_grad; ``fwd+bwd``: the input gradient an
attack step takes): milliseconds per batch, median of ``--repeats`` timed runs after warm-up, and
the speed-up. Both layouts give the same logits to float rounding (the max difference is printed).

Weights: the digits CNN from its cache (trained on first use); resnet20 from ``../shared`` when it
is there, else randomly initialized (the speed of a layout does not depend on the weights' values).

    python benchmarks/peers/bench_forward.py --threads 1 [--models digits_cnn,resnet20] [--device cpu]

``--fold``: instead, channels_last weights vs their BatchNorm-folded copy (``models/fold.py``, what
Square's candidate forwards run through), forward under no_grad only (the copy is never
differentiated), at the batch sizes Square sees on a robust model's survivors. Models without
BatchNorm (the digits CNN) have no copy and are skipped.

    python benchmarks/peers/bench_forward.py --threads 1 --fold --models resnet20

``--roofline``: how close the folded copy's fp32 forward already is to what the CPU can do. Per
batch: the forward's FLOPs (``torch.utils.flop_counter``: convolutions and matrix products, 2 per
multiply-add), its achieved GFLOP/s, and that as a share of the attainable rate, measured in the same
process as the median GFLOP/s of a 1024 x 1024 fp32 matrix product (the best case for the vector
units). A forward near that share cannot be made much faster in fp32 by any scheduling: only fewer
FLOPs or a cheaper number format would.

    python benchmarks/peers/bench_forward.py --threads 1 --roofline --models resnet20
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, device_name, pick_device, sync

from fragility.models.cifar_resnet import build as build_resnet
from fragility.models.digits_cnn import build as build_digits
from fragility.models.fold import folded_copy, why_not

BATCHES = {"digits_cnn": (8, 128, 500), "resnet20": (8, 32, 100)}
FOLD_BATCHES = {"digits_cnn": (2, 10, 100), "resnet20": (2, 10, 100)}


def load(name: str, shared: str | None) -> torch.nn.Module:
    """The model with NCHW weights (``channels_last=False``)."""
    if name == "digits_cnn":
        return build_digits(channels_last=False)
    root = Path(shared or os.environ.get("FRAGILITY_SHARED", REPO.parent / "shared")).expanduser()
    ckpt = root / "models" / "cifar10" / "resnet20-12fca82f.th"
    return build_resnet(depth=20, checkpoint=str(ckpt) if ckpt.is_file() else None, channels_last=False)


def time_ms(model, x, bf16: bool, backward: bool, repeats: int, dev) -> float:
    def step():
        if backward:
            xx = x.clone().requires_grad_(True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(xx).float().sum()
            loss.backward()
        else:
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                model(x)

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        step()
        sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_cnn,resnet20")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--fold", action="store_true", help="channels_last vs its BatchNorm-folded copy, fwd only")
    ap.add_argument("--roofline", action="store_true", help="the folded fp32 forward's GFLOP/s against a matrix product's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    print(f"# device {device_name(dev)}, threads {args.threads}, torch {torch.__version__}, median of {args.repeats}")
    if args.fold:
        fold_table(args, dev)
        return
    if args.roofline:
        roofline_table(args, dev)
        return
    print("| model | batch | precision | pass | NCHW ms | channels_last ms | speed-up |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for name in args.models.split(","):
        nchw = load(name, args.shared).to(dev).eval()
        cl = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        c, h, w = nchw.input_size
        for batch in BATCHES[name]:
            x = torch.rand(batch, c, h, w, generator=torch.Generator().manual_seed(batch)).to(dev)
            with torch.no_grad():
                diff = (nchw(x) - cl(x)).abs().max().item()
            for bf16 in (False, True):
                for backward in (False, True):
                    a = time_ms(nchw, x, bf16, backward, args.repeats, dev)
                    b = time_ms(cl, x, bf16, backward, args.repeats, dev)
                    print(
                        f"| {name} | {batch} | {'bf16' if bf16 else 'fp32'} | {'fwd+bwd' if backward else 'fwd'} "
                        f"| {a:.2f} | {b:.2f} | {a / b:.2f}x |",
                        flush=True,
                    )
            print(f"# {name} batch {batch}: max |logit difference| between layouts {diff:.2e}", flush=True)


def fold_table(args, dev) -> None:
    print("| model | batch | precision | pass | channels_last ms | folded copy ms | speed-up |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for name in args.models.split(","):
        model = load(name, args.shared).to(dev).to(memory_format=torch.channels_last).eval()
        folded = folded_copy(model)
        if folded is None:
            print(f"# {name}: no folded copy ({why_not(model) or 'torch.fx could not trace it'})", flush=True)
            continue
        c, h, w = model.input_size
        for batch in FOLD_BATCHES[name]:
            x = torch.rand(batch, c, h, w, generator=torch.Generator().manual_seed(batch)).to(dev)
            with torch.no_grad():
                diff = (model(x) - folded(x)).abs().max().item()
            for bf16 in (False, True):
                a = time_ms(model, x, bf16, False, args.repeats, dev)
                b = time_ms(folded, x, bf16, False, args.repeats, dev)
                print(f"| {name} | {batch} | {'bf16' if bf16 else 'fp32'} | fwd | {a:.2f} | {b:.2f} | {a / b:.2f}x |", flush=True)
            print(f"# {name} batch {batch}: max |logit difference| folded vs not {diff:.2e}", flush=True)


def forward_flops(model, x) -> int:
    """FLOPs of one forward of ``x`` (convolutions and matrix products), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def matmul_gflops(dev, repeats: int, n: int = 1024) -> float:
    a, b = (torch.rand(n, n, generator=torch.Generator().manual_seed(i)).to(dev) for i in (0, 1))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        a @ b
        sync(dev)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def roofline_table(args, dev) -> None:
    peak = matmul_gflops(dev, args.repeats)
    print(f"# attainable fp32 rate: {peak:.1f} GFLOP/s (1024 x 1024 matrix product, median of {args.repeats})")
    print("| model | batch | MFLOP / image | folded fp32 fwd ms | GFLOP/s | share of the matrix product's |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        model = load(name, args.shared).to(dev).to(memory_format=torch.channels_last).eval()
        net = folded_copy(model) or model  # the digits CNN has no BatchNorm: itself
        c, h, w = model.input_size
        for batch in sorted({*FOLD_BATCHES[name], 60}):
            x = torch.rand(batch, c, h, w, generator=torch.Generator().manual_seed(batch)).to(dev)
            flops = forward_flops(net, x)
            ms = time_ms(net, x, False, False, args.repeats, dev)
            rate = flops / ms / 1e6
            print(f"| {name} | {batch} | {flops / batch / 1e6:.1f} | {ms:.2f} | {rate:.1f} | {rate / peak:.0%} |", flush=True)
    print(f"# attainable fp32 rate after the table: {matmul_gflops(dev, args.repeats):.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
