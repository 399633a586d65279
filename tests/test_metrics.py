"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fragility.benchmarks.metrics import compute_metrics, perturbation_norms, wilson_interval


def _frame(**cols):
    n = len(cols["label"])
    base = dict(
        target=[-1] * n, queries=[1] * n, pred_conf=[0.5] * n, true_conf=[0.1] * n, linf=[0.0] * n, l2=[0.0] * n, l0=[0.0] * n
    )
    base.update(cols)
    return pd.DataFrame(base)


def test_wilson_matches_closed_form():
    k, n, z = 8, 10, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9) and hi == pytest.approx(centre + half, abs=1e-9)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_untargeted_metrics_by_hand():
    # 5 samples: 4 initially correct (0..3); attack flips 0 and 1; sample 4 was already wrong.
    df = _frame(
        label=[0, 1, 2, 3, 4],
        clean_pred=[0, 1, 2, 3, 9],
        adv_pred=[5, 6, 2, 3, 9],
        success=[1, 1, 0, 0, 0],
        queries=[2, 4, 10, 10, 0],
        linf=[0.1, 0.2, 0.3, 0.4, 0.0],
        l0=[3, 1, 2, 2, 0],
    )
    m = compute_metrics(df)
    assert m["n"] == 5 and m["n_attacked"] == 4
    assert m["clean_acc"] == pytest.approx(0.8)
    assert m["robust_acc"] == pytest.approx(0.4)
    assert m["success_rate"] == pytest.approx(0.5)
    assert m["mean_queries"] == pytest.approx(6.5)
    assert m["mean_linf"] == pytest.approx(0.25)
    assert m["mean_l0"] == pytest.approx(2.0)
    assert (m["success_ci_low"], m["success_ci_high"]) == pytest.approx(wilson_interval(2, 4))


def test_targeted_excludes_samples_already_in_target_class():
    df = _frame(label=[0, 1, 2], clean_pred=[0, 1, 2], adv_pred=[1, 1, 0], target=[1, 1, 1], success=[1, 1, 0])
    m = compute_metrics(df)
    assert m["n_attacked"] == 2  # the sample labelled 1 is not counted
    assert m["success_rate"] == pytest.approx(0.5)
    assert m["robust_acc"] == pytest.approx(1 / 3)


def test_perturbation_norms():
    clean = np.zeros((2, 3, 2, 2), dtype=np.float32)
    adv = clean.copy()
    adv[0, :, 0, 0] = [0.3, 0.0, 0.4]  # one pixel, two channels
    adv[1, 0, 1, 1] = -0.5
    adv[1, 2, 0, 1] = 0.5
    out = perturbation_norms(clean, adv)
    assert out["linf"].tolist() == pytest.approx([0.4, 0.5])
    assert out["l2"].tolist() == pytest.approx([0.5, math.sqrt(0.5)])
    assert out["l0"].tolist() == [1.0, 2.0]
