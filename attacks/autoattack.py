"""AutoAttack: the ensemble of parameter-free attacks that robustness leaderboards are built on.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. The attacks run in order, each only on the images that every
earlier one failed on; an image is robust only if every attack fails on it.

``version``:

- ``standard``: APGD-CE, APGD-T (targeted DLR, top-9 classes), FAB-T (top-9), Square (5000 queries);
- ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square (5000
  queries, 5 runs), APGD-T, FAB-T, as in the authors' ``version='plus'``;
- ``rand`` (randomized models and defenses): APGD-CE and APGD-DLR with ``eot_iter`` (20) gradient
  draws per step, each draw a counted query.

Each attack gets per-image random streams derived from the image's own key and the attack's
position, so a batch gives the same result as one image at a time. The result's
``extras["broken_by"]`` holds, per image, the index in :meth:`AutoAttack.attack_names` of the
attack that broke it (``-1``: robust, ``-2``: misclassified before any attack); queries are summed
over the attacks that ran on the image, plus the one clean forward pass. FAB-T runs with
``early_stop`` (an image leaves once it has a perturbation within ``eps``), which changes its
queries, not its successes at ``eps``. ``square_precision="bf16"`` runs Square's candidate
forwards in bfloat16 with every success re-checked in float32 (see ``attacks/square.py``): on a
robust model, where Square's 5,000 queries per surviving image are most of the time, it halves them
on CPUs with bf16 support, without changing what counts as a success. Square also asks the model's
BatchNorm-folded copy for its candidates where the model has one (``fold_bn``, on by default; see
``models/fold.py``), with the same re-check.

Example::

    res = AutoAttack(eps=8/255, version="standard")(model, images, labels)
    res.extras["broken_by"]; AutoAttack.extra_metrics(res)
"""

from __future__ import annotations

import copy
import time
import warnings

import torch

from fragility.attacks.apgd import APGD
from fragility.attacks.apgd_t import APGDT, few_classes_note
from fragility.attacks.base import Attack
from fragility.attacks.fab import FAB
from fragility.attacks.gradient import LpAttack, fewer_targets
from fragility.attacks.square import Square
from fragility.errors import ConfigError
from fragility.precision import check_precision
from fragility.rng import mix64

VERSIONS = ("standard", "plus", "rand")


class AutoAttack(LpAttack):
    name = "autoattack"
    sample_extras = ("broken_by",)

    def __init__(
        self,
        *,
        eps: float | str = 8 / 255,
        norm: str = "linf",
        version: str = "standard",
        steps: int = 100,
        n_target_classes: int = 9,
        queries: int = 5000,
        eot_iter: int = 20,
        square_precision: str = "fp32",
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, target=None, seed=seed)
        if version not in VERSIONS:
            raise ConfigError(f"unknown autoattack version {version!r} (valid: {', '.join(VERSIONS)})")
        for key, v in (("steps", steps), ("n_target_classes", n_target_classes), ("queries", queries), ("eot_iter", eot_iter)):
            if int(v) < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        self.version, self.steps, self.n_target_classes = version, int(steps), int(n_target_classes)
        self.queries, self.eot_iter = int(queries), int(eot_iter)
        check_precision(square_precision, "square_precision")
        self.square_precision = square_precision
        self.attacks = self._build()

    def params(self):
        p = {"norm": self.norm_name, "eps": self.eps, "version": self.version}
        for key, value, default in (
            ("steps", self.steps, 100),
            ("n_target_classes", self.n_target_classes, 9),
            ("queries", self.queries, 5000),
            ("eot_iter", self.eot_iter, 20),
        ):
            if value != default and not (key == "eot_iter" and self.version != "rand"):
                p[key] = value
        if self.square_precision != "fp32" and self.version != "rand":
            p["square_precision"] = self.square_precision
        return p

    def _build(self) -> list[tuple[str, Attack]]:
        lp = {"eps": self.eps, "norm": self.norm_name, "seed": self.seed}
        k, steps = self.n_target_classes, self.steps
        if self.version == "standard":
            return [
                ("apgd-ce", APGD(loss="ce", steps=steps, **lp)),
                ("apgd-t", APGDT(steps=steps, n_target_classes=k, **lp)),
                ("fab-t", FAB(targeted=True, steps=steps, n_target_classes=k, early_stop=True, **lp)),
                ("square", Square(queries=self.queries, precision=self.square_precision, **lp)),
            ]
        if self.version == "plus":
            return [
                ("apgd-ce", APGD(loss="ce", steps=steps, restarts=5, **lp)),
                ("apgd-dlr", APGD(loss="dlr", steps=steps, restarts=5, **lp)),
                ("fab", FAB(targeted=False, steps=steps, restarts=5, early_stop=True, **lp)),
                *[
                    (
                        f"square-{r + 1}",
                        Square(queries=self.queries, precision=self.square_precision, **{**lp, "seed": self.seed + r}),
                    )
                    for r in range(5)
                ],
                ("apgd-t", APGDT(steps=steps, n_target_classes=k, **lp)),
                ("fab-t", FAB(targeted=True, steps=steps, n_target_classes=k, early_stop=True, **lp)),
            ]
        return [
            ("apgd-ce", APGD(loss="ce", steps=steps, eot_iter=self.eot_iter, **lp)),
            ("apgd-dlr", APGD(loss="dlr", steps=steps, eot_iter=self.eot_iter, **lp)),
        ]

    def fit_classes(self, num_classes):
        k, notes = fewer_targets(self.name, self.n_target_classes, num_classes)
        if notes:
            self.n_target_classes = k
            self.attacks = self._build()
        return notes

    def attack_names(self) -> list[str]:
        return [label for label, _ in self.attacks]

    def _run(self, model, images, labels, targets, rng):
        if targets is not None:
            raise ConfigError("autoattack is untargeted (APGD-T and FAB-T pick their own targets)")
        n, dev = len(images), images.device
        inner = model.model  # each attack counts its own queries; they are added to ours below
        with torch.no_grad():
            logits = model(images)
        clean, classes = logits.argmax(1), logits.shape[1]
        broken_by = torch.full((n,), -1, dtype=torch.long, device=dev)
        broken_by[clean != labels] = -2
        adv = images.clone()
        seconds, substituted = [], {}
        for j, (label, attack) in enumerate(self.attacks):
            idx = (broken_by == -1).nonzero().flatten()
            if len(idx) == 0:
                seconds.append(0.0)
                continue
            attack, note = fit_classes(attack, classes)
            if note:
                substituted[label] = note
            start = time.perf_counter()
            keys = mix64(rng.keys[idx] + (j + 1))  # each attack its own per-image streams
            res = attack(inner, images[idx], labels[idx], keys=keys)
            seconds.append(time.perf_counter() - start)
            model.counts[idx.cpu()] += res.queries
            ok = res.success.to(dev)
            adv[idx[ok]] = res.adv.to(dev)[ok]
            broken_by[idx[ok]] = j
        return adv, {"broken_by": broken_by, "attack_seconds": seconds, "substituted": substituted}

    def extra_metrics(self, result) -> dict:
        """The attacks in order, how many images each one broke (that no earlier one had), and the
        seconds each spent."""
        broken = result.extras["broken_by"]
        names = self.attack_names()
        secs = result.extras.get("attack_seconds", [])
        if secs and isinstance(secs[0], list):  # concatenated batches: one list per batch
            secs = [sum(s) for s in zip(*secs, strict=True)]
        out = {
            "attacks": names,
            "added": {name: int((broken == j).sum()) for j, name in enumerate(names)},
            "robust": int((broken == -1).sum()),
            "misclassified_clean": int((broken == -2).sum()),
            "attack_seconds": {name: round(float(s), 3) for name, s in zip(names, secs, strict=False)},
        }
        subs = result.extras.get("substituted") or {}
        if isinstance(subs, list):  # concatenated batches: one dict per batch
            subs = {k: v for d in subs for k, v in d.items()}
        if subs:
            out["substituted"] = subs
        return out


def fit_classes(attack: Attack, classes: int) -> tuple[Attack, str]:
    """The ensemble's attack for a model with ``classes`` outputs, and a note when a loss had to
    change: DLR needs 3 classes (targeted DLR 4), so a two-class model's APGD-DLR ascends the margin
    loss instead (APGD-T switches to the targeted margin itself, below 4 classes). The margin does
    not saturate, and APGD's signed or normalized steps and its checkpoints ignore the loss's scale."""
    if isinstance(attack, APGDT) and classes < 4:
        return attack, few_classes_note(classes)
    if isinstance(attack, APGD) and attack.loss == "dlr" and classes < 3:
        swapped = copy.copy(attack)
        swapped.loss = "margin"
        note = f"apgd: the model has {classes} classes and DLR needs 3; the margin loss is used instead"
        warnings.warn(note, RuntimeWarning, stacklevel=3)
        return swapped, note
    return attack, ""
