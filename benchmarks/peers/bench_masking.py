"""PGD alone vs PGD with the masking checks and escalation, on models that mask their gradients.

Each model is a TorchScript file loaded the way a user's model is (``model=checkpoint
model.format=torchscript``), so the harness knows nothing of the trick inside:

- digits CNN (the cached recipe model) with logits x1000, with its input rounded to 4 levels, with
  Gaussian input noise (sigma 0.1) inside the network, label-only (its scores are the one-hot
  vector of its prediction, x10, as an API that returns only a label; scored by PGD-10 and, as
  ``digits_onehot_square``, by Square with 1000 queries), and unchanged (the honest control);
- optionally (``--cifar-n N``) the published CIFAR-10 ResNet-20 with logits x1e4, and label-only.

For every model one ``fragility`` run (``escalate=true``, the default) writes the PGD row (with its
flags) and, when a check fires, the escalated row; the table shows both and the per-sample worst
case that the summary reports. Usage::

    python benchmarks/peers/bench_masking.py --threads 1                  # digits, all 539 test images
    python benchmarks/peers/bench_masking.py --threads 1 --cifar-n 200 --only cifar_x1e4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[2]


def compose(overrides: list[str]):
    """The app's config, composed like the command line would (no Hydra runtime)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    import fragility.benchmarks.config  # noqa: F401  (registers the frac resolver)

    with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


class Masked(nn.Module):
    """``net`` behind one masking trick; [0, 1] input, normalization inside."""

    def __init__(self, net: nn.Module, kind: str, amount: float, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net, self.kind, self.amount = net, kind, amount
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        if self.kind == "round":
            x = torch.round(x * self.amount) / self.amount
        elif self.kind == "noise":
            x = x + self.amount * torch.randn_like(x)
        z = self.net((x - self.mean) / self.std)
        if self.kind == "onehot":
            return F.one_hot(z.argmax(1), z.shape[1]).to(z.dtype) * self.amount
        return z * self.amount if self.kind == "scale" else z


def script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; model.format=torchscript still loads it
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="0.1", help="digits Linf budget (an honest CNN keeps about 60%% at 0.1)")
    ap.add_argument("--cifar-eps", default="8/255")
    ap.add_argument("--n", type=int, default=539, help="digits test images (539 = all)")
    ap.add_argument("--cifar-n", type=int, default=0, help="CIFAR-10 test images for resnet20 x1e4 (0: skip)")
    ap.add_argument(
        "--only",
        default=None,
        help="comma list: digits_honest,digits_x1000,digits_round4,digits_noise,digits_onehot,digits_onehot_square,"
        "cifar_x1e4,cifar_onehot",
    )
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--results", default=str(REPO / "results" / "bench_masking"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fragility.benchmarks.runner import run
    from fragility.benchmarks.store import ResultStore
    from fragility.benchmarks.worst_case import samples_for, worst_case
    from fragility.models.digits_cnn import build as digits

    out = Path(args.results)
    (out / "models").mkdir(parents=True, exist_ok=True)
    net = digits().net
    dm, ds = [0.31], [0.38]
    jobs = {
        "digits_honest": (Masked(net, "none", 1.0, dm, ds), "digits", "pgd"),
        "digits_x1000": (Masked(net, "scale", 1000.0, dm, ds), "digits", "pgd"),
        "digits_round4": (Masked(net, "round", 4.0, dm, ds), "digits", "pgd"),
        "digits_noise": (Masked(net, "noise", 0.1, dm, ds), "digits", "pgd"),
        "digits_onehot": (Masked(net, "onehot", 10.0, dm, ds), "digits", "pgd"),
        # a score-based attack on the same label-only model (Square's margin is flat there)
        "digits_onehot_square": (Masked(net, "onehot", 10.0, dm, ds), "digits", "square"),
    }
    if args.cifar_n:
        from fragility.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
        from fragility.models.cifar_resnet import build as resnet

        ckpt = sorted((Path(args.shared) / "models" / "cifar10").glob("resnet20-*.th"))[0]
        cifar = resnet(20, str(ckpt)).net
        jobs["cifar_x1e4"] = (Masked(cifar, "scale", 1e4, list(CIFAR_MEAN), list(CIFAR_STD)), "cifar", "pgd")
        jobs["cifar_onehot"] = (Masked(cifar, "onehot", 10.0, list(CIFAR_MEAN), list(CIFAR_STD)), "cifar", "pgd")
    only = set(args.only.split(",")) if args.only else None
    base = [f"results_dir={out}", "logger=none", "progress=false", "device=cpu", "model=checkpoint"]
    base += ["model.format=torchscript", "escalate=true"]
    print(f"# bench_masking: PGD-10 alone vs with checks + escalation, {args.threads} thread(s)", flush=True)
    for name, (module, kind, attack) in jobs.items():
        if only and name not in only:
            continue
        path = script(module, out / "models" / f"{name}.pt")
        if kind == "digits":
            ov = ["dataset=digits", f"n_samples={args.n}", f"attack.eps={args.eps}", "model.input_size=[1,8,8]"]
            ov += ["model.mean=[0.0]", "model.std=[1.0]"]
        else:
            test = Path(args.shared) / "data" / "cifar10" / "test.npz"
            ov = ["dataset=cifar10_npz", f"dataset.path={test}", f"n_samples={args.cifar_n}", f"attack.eps={args.cifar_eps}"]
            ov += ["model.input_size=[3,32,32]", "model.mean=[0.0,0.0,0.0]", "model.std=[1.0,1.0,1.0]", "batch_size=100"]
        if attack == "square":
            ov.append("attack.queries=1000")
        t0 = time.perf_counter()
        run(compose([*base, f"attack={attack}", *ov, f"model.path={path}", f"model.name={name}"]))
        print(f"# {name} done in {time.perf_counter() - t0:.0f}s", flush=True)

    store = ResultStore(out)
    recs = store.records()
    summ = worst_case(recs, samples_for(store, recs))
    print(
        "\n| model | n | clean | attack alone | flags on its row | escalated attack | escalated | reported (per-sample worst) [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for _, row in summ.iterrows():
        group = [r for r in recs if r.model == row["model"] and r.seed == row["seed"] and r.n == row["n"]]
        pgd = next((r for r in group if r.variant == "standard"), None)
        esc = next((r for r in group if r.variant == "escalated"), None)
        if pgd is None:
            continue
        esc_cells = f"{esc.attack} {esc.params} | {esc.robust_acc:.1%}" if esc else "– | –"
        print(
            f"| {row['model']} | {row['n']} | {row['clean_acc']:.1%} | {pgd.attack} {pgd.robust_acc:.1%} | {pgd.flags or 'none'} | {esc_cells} | "
            f"**{row['worst_robust_acc']:.1%}** [{row['robust_ci_low']:.1%}, {row['robust_ci_high']:.1%}] |"
        )
    print(f"\nleaderboards: {out}/leaderboard.md (flags column), {out}/summary.csv")


if __name__ == "__main__":
    sys.exit(main())
