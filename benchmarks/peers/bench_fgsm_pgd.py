"""FGSM and PGD-10 (Linf, 8/255): fragility vs a plain torch loop, torchattacks, Foolbox and ART.

Same model (resnet20, the shared checkpoint), same seeded 1000 CIFAR-10 test images, same
settings, one process. Every method is timed for the attack *plus* the forward pass it needs to
report robust accuracy (fragility's call includes that pass; Foolbox's success mask too), on all
images. Prints seconds, ratio to the plain loop (best of --repeats) and robust accuracy.

    pip install torchattacks adversarial-robustness-toolbox foolbox
    python benchmarks/peers/bench_fgsm_pgd.py --shared ../shared [--n 1000 --threads 1 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fragility.attacks import FGSM, PGD
from fragility.benchmarks.metrics import outcome_metrics
from fragility.datasets import Npz
from fragility.models import predict
from fragility.models.cifar_resnet import build

EPS, STEPS = 8 / 255, 10
ALPHA = 2.5 * EPS / STEPS


def plain_fgsm(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    adv = (x + EPS * g.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return model(adv).argmax(1)


def plain_pgd(model, x, y):
    adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(STEPS):
        adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = torch.min(torch.max(adv.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    with torch.no_grad():
        return model(adv).argmax(1)


def methods(model, n_classes):
    out = {
        "plain loop": (plain_fgsm, plain_pgd),
        "fragility": (lambda m, x, y: FGSM(eps=EPS)(m, x, y).pred, lambda m, x, y: PGD(eps=EPS, steps=STEPS)(m, x, y).pred),
    }
    try:
        import torchattacks

        fa, pa = torchattacks.FGSM(model, eps=EPS), torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)

        def ta(atk):
            def f(m, x, y):
                adv = atk(x, y)
                with torch.no_grad():
                    return m(adv).argmax(1)

            return f

        out["torchattacks"] = (ta(fa), ta(pa))
    except ImportError:
        print("torchattacks not installed: skipped")
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))

        def fbf(atk):
            def f(m, x, y):
                _, _, success = atk(fmodel, x, y, epsilons=EPS)
                return torch.where(success, -1, y)  # success means misclassified

            return f

        out["foolbox"] = (
            fbf(fb.attacks.LinfFastGradientAttack(random_start=False)),
            fbf(fb.attacks.LinfPGD(abs_stepsize=ALPHA, steps=STEPS, random_start=True)),
        )
    except ImportError:
        print("foolbox not installed: skipped")
    try:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=n_classes, clip_values=(0.0, 1.0)
        )

        def artf(make):
            def f(m, x, y):
                atk = make(len(x))
                adv = atk.generate(x.numpy(), y=y.numpy())
                return torch.from_numpy(clf.predict(adv, batch_size=len(x)).argmax(1))

            return f

        out["ART"] = (
            artf(lambda b: FastGradientMethod(clf, norm=np.inf, eps=EPS, batch_size=b)),
            artf(
                lambda b: ProjectedGradientDescentPyTorch(
                    clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS, num_random_init=1, batch_size=b, verbose=False
                )
            ),
        )
    except ImportError:
        print("adversarial-robustness-toolbox not installed: skipped")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("FRAGILITY_SHARED", "../shared"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FRAGILITY_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    model = build(depth=20, checkpoint=str(shared / "models/cifar10/resnet20-12fca82f.th")).eval()
    data = Npz(str(shared / "data/cifar10/test.npz")).load(args.n, seed=0)
    x, y = data.images(), data.y
    clean_pred, _ = predict(model, x)
    clean = outcome_metrics(y, clean_pred, clean_pred)["clean_acc"]
    meths = methods(model, 10)
    rows = []
    for a, attack in enumerate(("FGSM", "PGD-10")):
        times = {k: [] for k in meths}
        accs = {}
        for r in range(args.repeats):
            for name, fns in meths.items():  # interleaved, so drift in machine load hits all methods alike
                torch.manual_seed(r)
                t0 = time.perf_counter()
                preds = [
                    fns[a](model, x[i : i + args.batch_size], y[i : i + args.batch_size])
                    for i in range(0, len(x), args.batch_size)
                ]
                times[name].append(time.perf_counter() - t0)
                # the runner's definition: robust = correct before and after the attack
                accs[name] = outcome_metrics(y, clean_pred, torch.cat(preds))["robust_acc"]
        base = min(times["plain loop"])
        for name in meths:
            t = min(times[name])
            rows.append((attack, name, t, t / base, accs[name]))
    print(
        f"\nresnet20, {args.n} seeded shared CIFAR-10 test images, Linf eps 8/255, {args.threads} thread(s), best of {args.repeats}; clean acc {clean:.3f}"
    )
    print(f"{'attack':8} {'method':14} {'seconds':>9} {'x plain':>8} {'robust acc':>11}")
    for attack, name, t, ratio, acc in rows:
        print(f"{attack:8} {name:14} {t:9.2f} {ratio:8.2f} {acc:11.3f}")


if __name__ == "__main__":
    main()
