"""Per-sample worst case against a hand count on planted outcomes; McNemar against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from records import make_run_record
from scipy.stats import binomtest

from fragility.benchmarks.leaderboard import summary
from fragility.benchmarks.worst_case import compare, mcnemar, worst_case
from fragility.stats import wilson_interval


def _rec(h, attack, robust, *, model="m", eps=0.1, seed=0, weights="", variant="standard", flags="", data=None):
    n = len(robust)
    return make_run_record(
        config_json=json.dumps({"inputs": {"dataset.path": data}} if data else {}),
        config_hash=h,
        model=model,
        attack=attack,
        eps=eps,
        n=n,
        clean_acc=1.0,
        robust_acc=float(np.mean(robust)),
        n_attacked=n,
        seed=seed,
        variant=variant,
        flags=flags,
        weights_sha256=weights,
    )


def _frame(robust, ids=None):
    robust = np.asarray(robust, dtype=bool)
    n = len(robust)
    label = np.arange(n) % 10
    return pd.DataFrame(
        {
            "sample_id": np.arange(n) if ids is None else ids,
            "label": label,
            "clean_pred": label,
            "adv_pred": np.where(robust, label, (label + 1) % 10),
        }
    )


def test_worst_case_equals_hand_count():
    # 10 images; PGD breaks 0-3, Square breaks 2-5, escalated PGD breaks 6: robust only 7, 8, 9
    pgd = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    sq = [1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    esc = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    recs = [_rec("a", "pgd", pgd), _rec("b", "square", sq, flags="zero_grad 3/10"), _rec("c", "pgd", esc, variant="escalated")]
    samples = {"a": _frame(pgd), "b": _frame(sq), "c": _frame(esc)}
    out = worst_case(recs, samples)
    assert len(out) == 1
    row = out.loc[0]
    assert row["worst_robust_acc"] == pytest.approx(3 / 10)  # by hand: images 7, 8, 9
    assert row["min_single_attack"] == pytest.approx(0.6)  # the old "minimum of aggregates"
    assert (row["robust_ci_low"], row["robust_ci_high"]) == pytest.approx(wilson_interval(3, 10))
    assert row["n_attacks"] == 3 and bool(row["per_sample"]) and row["flags"] == "zero_grad"
    assert summary(recs, samples).loc[0, "worst_robust_acc"] == pytest.approx(0.3)  # the leaderboard's summary


def test_groups_keep_weights_seeds_and_budgets_apart():
    r = [1, 0, 1, 1]
    recs = [
        _rec("a", "pgd", r, weights="aa"),
        _rec("b", "pgd", [0, 0, 1, 1], weights="bb"),
        _rec("c", "pgd", r, seed=1),
        _rec("d", "pgd", r, eps=0.2),
    ]
    out = worst_case(recs, {k: _frame(v) for k, v in zip("abcd", [r, [0, 0, 1, 1], r, r])})
    assert len(out) == 4


def test_other_data_under_one_dataset_name_is_not_one_worst_case():
    """Two npz files both named cifar10 (the test set replaced at the same path): their sample ids
    are positions in different images, so their outcomes are never intersected, nor paired."""
    a, b = [1, 1, 0, 0], [0, 0, 1, 1]
    recs = [_rec("a", "pgd", a, data="d1"), _rec("b", "fgsm", b, data="d2"), _rec("c", "pgd", b, model="m2", data="d1")]
    frames = {k: _frame(v) for k, v in zip("abc", [a, b, b])}
    out = worst_case(recs, frames)
    m = out[out["model"] == "m"]
    assert len(m) == 2 and sorted(m["data_sha256"]) == ["d1", "d2"]
    assert sorted(m["worst_robust_acc"]) == [0.5, 0.5]  # intersected, they would give 0.0
    (row,) = compare(recs, frames, "m", "m2").to_dict("records")  # only the d1 runs pair
    assert (row["acc_a"], row["acc_b"]) == (0.5, 0.5) and (row["only_a"], row["only_b"]) == (2, 2)


def test_missing_samples_fall_back_to_aggregate():
    recs = [_rec("a", "pgd", [1, 1, 0, 0]), _rec("b", "fgsm", [0, 1, 1, 1])]
    row = worst_case(recs, {"a": _frame([1, 1, 0, 0])}).loc[0]
    assert not row["per_sample"] and row["worst_robust_acc"] == 0.5 and row["worst_attack"] == "pgd"


def test_mcnemar_equals_scipy_exact_binomial():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    b = a.copy()
    flip = rng.random(200) < 0.15
    b[flip] = ~b[flip]
    res = mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (res["only_a"], res["only_b"]) == (only_a, only_b) and only_a + only_b > 0
    assert res["pvalue"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    assert mcnemar([True, False], [True, False])["pvalue"] == 1.0


def test_compare_pairs_models_on_the_same_images():
    a1, a2 = [1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1]  # model A robust under both: 0, 2, 3, 5
    b1 = [0, 0, 0, 1, 0, 0]  # model B: 3
    recs = [_rec("a1", "pgd", a1, model="A"), _rec("a2", "square", a2, model="A"), _rec("b1", "pgd", b1, model="B")]
    samples = {"a1": _frame(a1), "a2": _frame(a2), "b1": _frame(b1)}
    out = compare(recs, samples, "A", "B")
    row = out.loc[0]
    assert (row["only_a"], row["only_b"], row["n"]) == (3, 0, 6)
    assert row["acc_a"] == pytest.approx(4 / 6) and row["pvalue"] == pytest.approx(binomtest(3, 3, 0.5).pvalue)
    assert not math.isnan(row["pvalue"])
    with pytest.raises(ValueError):
        compare(recs, samples, "A", "C")
