"""Per-sample worst case over attacks, its Wilson interval, and McNemar's paired test.

RobustBench and AutoAttack count an image as robust only if it survives EVERY attack: robust
accuracy over an ensemble is the share of images that no attack broke, which can be lower than the
lowest single attack's number (each attack breaks different images). This module computes that
from the per-sample facts of the store, within groups of records that share the weights, the data
(its name and, where the run recorded it, the digest of its files: ``data_sha256``,
:func:`fragility.benchmarks.inputs.data_digest`), the seed and n (so the same images were
attacked), per threat model (norm, eps):

- :func:`worst_case`: one row per (model, weights, dataset, data, defense, threat, seed, n): per-sample
  robust accuracy with a Wilson 95% interval (scipy), the attack with the lowest aggregate number,
  the attacks that broke at least one image no other attack broke, and the union of masking flags;
- :func:`mcnemar`: McNemar's exact test on two robust/not-robust vectors over the same images (the
  two-sided binomial test of the discordant pairs, ``scipy.stats.binomtest(b, b + c, 0.5)``);
- :func:`compare`: two models (or defenses) at one threat model, paired by ``sample_id``.

Everything here is a pure function of records and per-sample frames (``{config_hash: frame}``, the
frame as :meth:`ResultStore.samples` returns it); :func:`samples_for` reads them from a store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from fragility.benchmarks.checks import parse_flags
from fragility.benchmarks.inputs import data_digest
from fragility.benchmarks.page import threat_of
from fragility.benchmarks.record import RunRecord
from fragility.stats import wilson_interval

GROUP = ["model", "weights_sha256", "dataset", "data_sha256", "defense", "threat", "seed", "n"]
COLUMNS = [
    *GROUP,
    "clean_acc",
    "worst_robust_acc",
    "robust_ci_low",
    "robust_ci_high",
    "worst_attack",
    "min_single_attack",
    "n_attacks",
    "per_sample",
    "flags",
]


def threat(r: RunRecord) -> str:
    """``linf 0.3``, ``l0 k=1``: the threat model of a record, the one label every board uses
    (:func:`fragility.benchmarks.page.threat_label`)."""
    return threat_of(r)


def label(r: RunRecord) -> str:
    """``pgd`` or ``square (escalated)``: an attack and its variant."""
    return r.attack + ("" if r.variant == "standard" else f" ({r.variant})")


def robust_vector(frame: pd.DataFrame) -> pd.Series:
    """Per sample (indexed by ``sample_id``): classified correctly before and after the attack."""
    ok = (frame["clean_pred"].to_numpy() == frame["label"].to_numpy()) & (
        frame["adv_pred"].to_numpy() == frame["label"].to_numpy()
    )
    return pd.Series(ok, index=frame["sample_id"].to_numpy())


def samples_for(store, records: list[RunRecord]) -> dict[str, pd.DataFrame]:
    """``{config_hash: per-sample frame}`` for the records that have per-sample facts in ``store``."""
    out = {}
    for r in records:
        frame = store.samples(r.config_hash)
        if frame is not None and len(frame):
            out[r.config_hash] = frame
    return out


def worst_case(records: list[RunRecord], samples: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Per-sample worst case per group (see the module docstring). A group in which any record
    lacks per-sample facts (or whose records do not cover the same images) falls back to the
    lowest aggregate number, with ``per_sample`` False."""
    samples = samples or {}
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.status != "done":
            continue
        key = (r.model, r.weights_sha256, r.dataset, data_digest(r.config_json), r.defense, threat(r), r.seed, r.n)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, recs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        worst = min(recs, key=lambda r: (r.robust_acc, r.variant == "standard"))
        vecs = [robust_vector(samples[r.config_hash]) for r in recs if r.config_hash in samples]
        same = len(vecs) == len(recs) and all(v.index.equals(vecs[0].index) for v in vecs)
        if same:
            robust = np.logical_and.reduce([v.to_numpy() for v in vecs])
            k, n = int(robust.sum()), len(robust)
            acc = k / n if n else math.nan
        else:
            acc, n = float(worst.robust_acc), int(worst.n)
            k = round(acc * n) if n else 0
        lo, hi = wilson_interval(k, n)
        flags = sorted({f for r in recs for f in parse_flags(r.flags)})
        clean = max((r.clean_acc for r in recs if not math.isnan(r.clean_acc)), default=math.nan)
        rows.append([*key, clean, acc, lo, hi, label(worst), float(worst.robust_acc), len(recs), same, " ".join(flags)])
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["model", "dataset", "defense", "worst_robust_acc"], kind="stable").reset_index(drop=True)


def mcnemar(robust_a, robust_b) -> dict[str, float]:
    """McNemar's exact test of two paired boolean vectors (robust per image, same images, same
    order). ``b``: robust under A only; ``c``: under B only; ``pvalue``: two-sided exact binomial
    test of ``b`` successes in ``b + c`` trials at 1/2 (1.0 when there is no discordant pair)."""
    a, b_ = np.asarray(robust_a, dtype=bool), np.asarray(robust_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired vectors differ in length: {a.shape} vs {b_.shape}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    acc = lambda v: float(v.mean()) if len(v) else math.nan
    return {"n": len(a), "acc_a": acc(a), "acc_b": acc(b_), "only_a": b, "only_b": c, "pvalue": float(p)}


def per_sample_worst(records: list[RunRecord], samples: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Per ``sample_id``: robust under every one of ``records`` (which must share the images)."""
    vecs = [robust_vector(samples[r.config_hash]) for r in records if r.config_hash in samples]
    if not vecs or len(vecs) != len(records):
        raise ValueError("per-sample facts are missing for some of the records")
    out = vecs[0]
    for v in vecs[1:]:
        out = out & v.reindex(out.index, fill_value=False)
    return out


def compare(
    records: list[RunRecord], samples: Mapping[str, pd.DataFrame], a: str, b: str, threat_model: str | None = None
) -> pd.DataFrame:
    """McNemar per threat model between two models (or defenses): ``a`` and ``b`` match a
    record's ``model`` or ``defense`` exactly. Each side is its per-sample worst case over its
    attacks; only images both sides evaluated (same ``sample_id``, same dataset, data digest and
    seed) count."""

    def side(name: str) -> list[RunRecord]:
        return [r for r in records if r.status == "done" and (r.model == name or r.defense == name)]

    ra, rb = side(a), side(b)
    if not ra or not rb:
        missing = a if not ra else b
        raise ValueError(f"no records for {missing!r} (give a model or defense name as the leaderboard shows it)")
    rows = []
    for t in sorted({threat(r) for r in ra} & {threat(r) for r in rb}):
        if threat_model and t != threat_model:
            continue
        data = lambda r: (r.dataset, data_digest(r.config_json), r.seed)
        for ds, digest, seed in sorted({data(r) for r in ra if threat(r) == t}):
            sa = [r for r in ra if threat(r) == t and data(r) == (ds, digest, seed)]
            sb = [r for r in rb if threat(r) == t and data(r) == (ds, digest, seed)]
            if not sb:
                continue
            va, vb = per_sample_worst(sa, samples), per_sample_worst(sb, samples)
            common = va.index.intersection(vb.index)
            res = mcnemar(va.loc[common].to_numpy(), vb.loc[common].to_numpy())
            rows.append({"threat": t, "dataset": ds, "seed": seed, "a": a, "b": b, **res})
    return pd.DataFrame(
        rows, columns=["threat", "dataset", "seed", "a", "b", "n", "acc_a", "acc_b", "only_a", "only_b", "pvalue"]
    )
