"""Run-level metrics from per-sample facts.

Definitions (n = all evaluated samples; "attacked" = initially correct samples, minus, for a
targeted attack, those whose label already is the target):
- ``clean_acc``: share of n classified correctly before the attack.
- ``robust_acc``: share of n classified correctly before *and* after the attack.
- ``success_rate``: share of attacked samples where the attack succeeded (untargeted: label
  changed; targeted: target predicted), with a Wilson 95% interval (scipy).
- ``mean_queries``, ``mean_linf``/``l2``/``l0`` (l0 counts changed pixel positions), mean
  confidences: averaged over attacked samples.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fragility.stats import wilson_interval


def perturbation_norms(clean: np.ndarray, adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample Linf, L2 and L0 (pixel positions with any channel changed) of ``adv - clean``."""
    d = (adv.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), clean.shape[1], -1)
    return {
        "linf": np.abs(d).max(axis=(1, 2)) if d.size else np.zeros(len(clean)),
        "l2": np.sqrt((d**2).sum(axis=(1, 2))),
        "l0": (np.abs(d) > 1e-8).any(axis=1).sum(axis=1).astype(np.float64),
    }


#: the metrics of :func:`compute_metrics` that a :class:`~fragility.benchmarks.record.RunRecord` stores
METRIC_FIELDS = (
    "n",
    "clean_acc",
    "robust_acc",
    "n_attacked",
    "success_rate",
    "success_ci_low",
    "success_ci_high",
    "mean_queries",
    "mean_linf",
    "mean_l2",
    "mean_l0",
    "mean_conf",
    "mean_true_conf",
)


def compute_metrics(samples: pd.DataFrame) -> dict[str, float]:
    """``samples`` columns: label, clean_pred, adv_pred, target (or -1), success, queries,
    pred_conf, true_conf, linf, l2, l0."""
    n = len(samples)
    correct = samples["clean_pred"].to_numpy() == samples["label"].to_numpy()
    still = correct & (samples["adv_pred"].to_numpy() == samples["label"].to_numpy())
    attacked = correct & (samples["target"].to_numpy() != samples["label"].to_numpy())
    k = int(samples["success"].to_numpy()[attacked].sum())
    m = int(attacked.sum())
    lo, hi = wilson_interval(k, m)
    sub = samples[attacked]
    mean = lambda c: float(sub[c].mean()) if m else math.nan
    return {
        "n": n,
        "clean_acc": float(correct.mean()) if n else math.nan,
        "robust_acc": float(still.mean()) if n else math.nan,
        "n_attacked": m,
        "success_rate": k / m if m else math.nan,
        "success_ci_low": lo,
        "success_ci_high": hi,
        "mean_queries": mean("queries"),
        "mean_linf": mean("linf"),
        "mean_l2": mean("l2"),
        "mean_l0": mean("l0"),
        "mean_conf": mean("pred_conf"),
        "mean_true_conf": mean("true_conf"),
    }


def outcome_metrics(
    labels,
    clean_pred,
    adv_pred,
    *,
    success=None,
    queries=None,
    targets=None,
) -> dict[str, float]:
    """:func:`compute_metrics` for callers that hold only predictions (the peer benchmarks): one
    definition of robust accuracy and success for every method. ``success`` defaults to the
    untargeted criterion (``adv_pred != label``; targeted: ``adv_pred == target``)."""
    y = np.asarray(labels).astype(np.int64)
    n = len(y)
    adv = np.asarray(adv_pred).astype(np.int64)
    tgt = np.full(n, -1) if targets is None else np.asarray(targets).astype(np.int64)
    if success is None:
        success = np.where(tgt >= 0, adv == tgt, adv != y)
    nan = np.full(n, np.nan)
    frame = pd.DataFrame(
        {
            "label": y,
            "clean_pred": np.asarray(clean_pred).astype(np.int64),
            "adv_pred": adv,
            "target": tgt,
            "success": np.asarray(success).astype(int),
            "queries": np.zeros(n) if queries is None else np.asarray(queries, dtype=np.float64),
            "pred_conf": nan,
            "true_conf": nan,
            "linf": nan,
            "l2": nan,
            "l0": nan,
        }
    )
    return compute_metrics(frame)
