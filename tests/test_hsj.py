"""HopSkipJump: inside the L2/Linf ball and [0, 1]; reads only labels (the same outcome through a
one-hot model, and through a model whose backward raises); the closed-form L2 boundary of a linear
model; batch invariance; queries capped and stopped at success; targeted; and the escalation of a
label-only model under an L2 budget to it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fragility.attacks.hsj import HopSkipJump
from fragility.errors import ConfigError
from tests.test_rays import Blackbox, OneHot


@pytest.fixture(scope="module")
def probe(digits_test):
    return digits_test.images(slice(0, 48)), digits_test.y[:48]


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.05)])
def test_inside_the_ball_and_the_box_and_queries_capped(tiny_model, tiny_batch, norm, eps):
    x, y = tiny_batch
    res = HopSkipJump(eps=eps, norm=norm, queries=150)(tiny_model, x, y)
    d = res.adv - x
    size = d.abs().flatten(1).amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert (res.queries >= 1).all() and (res.queries <= 150).all()
    none = HopSkipJump(eps=0, norm=norm, queries=150)(tiny_model, x, y)  # an empty ball: nothing asked
    assert torch.equal(none.adv, x) and (none.queries == 0).all()


def test_reads_only_labels_and_stops_at_success(digits_model, probe):
    x, y = probe
    kw = {"eps": 1.0, "norm": "l2", "queries": 600}
    plain = HopSkipJump(**kw)(digits_model, x, y)
    hard = HopSkipJump(**kw)(OneHot(digits_model), x, y)
    box = HopSkipJump(**kw)(Blackbox(digits_model), x, y)
    # one bit per query: a model with the same decisions gives the same walk
    assert torch.equal(plain.success, hard.success) and torch.equal(plain.queries, hard.queries)
    assert torch.equal(plain.adv, box.adv)
    # the digits CNN at L2 1.0: PGD-50 breaks about 98%, HopSkipJump with 600 queries most
    assert plain.success.float().mean() > 0.6
    broken, dist = plain.success, plain.extras["boundary_dist"]
    assert (plain.queries[broken] < 600).all() and (dist[broken] <= 1.0 + 1e-6).all()
    # every kept point is misclassified: the judged success agrees with the walk's distance
    assert torch.equal(broken, dist <= 1.0)


def test_walks_to_the_closed_form_l2_boundary_of_a_linear_model():
    torch.manual_seed(0)
    w = torch.randn(16)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([w, -w]) / 2)
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin)
    x = (0.5 + 0.02 * torch.randn(6, 1, 4, 4)).clamp(0, 1)
    z = model(x)
    y = z.argmax(1)
    exact = (z[:, 0] - z[:, 1]).abs() / w.norm()  # L2 distance to the hyperplane w . x = 0 (inside the box)
    res = HopSkipJump(eps=1e-6, norm="l2", queries=3000)(model, x, y)
    found = res.extras["boundary_dist"]
    assert (found >= exact - 1e-5).all()  # never closer than the boundary itself
    assert (found <= exact * 1.05).all()  # and within 5% of it; the noise start is about 1.2 away
    assert (res.queries == 3000).all()  # eps below the boundary: the whole budget is spent


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.05)])
def test_a_batch_gives_the_same_result_as_one_image_at_a_time(tiny_model, tiny_batch, norm, eps):
    x, y = tiny_batch
    batch = HopSkipJump(eps=eps, norm=norm, queries=300)(tiny_model, x, y)
    for i in (0, 5, 11):
        one = HopSkipJump(eps=eps, norm=norm, queries=300)(tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.equal(one.adv[0], batch.adv[i]) and int(one.queries[0]) == int(batch.queries[i])


def test_targeted_reaches_the_target_or_keeps_the_image(digits_model, probe):
    x, y = probe
    res = HopSkipJump(eps=2.0, norm="l2", queries=1500, target=3)(digits_model, x, y)
    other = y != 3
    assert res.success[other].float().mean() > 0.4
    assert (res.pred[res.success] == 3).all()
    # a failed image is its clean self or a point inside the ball, never one outside it
    assert ((res.adv - x).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()


def test_bad_settings():
    for bad in (
        {"queries": 0},
        {"init_evals": 0},
        {"max_evals": 10, "init_evals": 100},
        {"gamma": 0},
        {"gamma": float("nan")},
        {"init_tries": 0},
    ):
        with pytest.raises(ConfigError):
            HopSkipJump(**bad)
    with pytest.raises(ConfigError):
        HopSkipJump(norm="l0")


def test_a_label_only_model_under_l2_is_not_reported_robust(digits_model, digits_test, tmp_path):
    """The digits analogue of a label-only API under an L2 budget: PGD sees zero gradients; the
    label_only flag escalates to HopSkipJump (RayS is Linf only), which comes near the plain model's."""
    from fragility.benchmarks.evaluate import evaluate

    x, y = digits_test.images(slice(0, 100)), digits_test.y[:100]
    kw = {"eps": 0.6, "norm": "l2", "steps": 10, "results_dir": tmp_path, "progress": False}
    plain = evaluate(digits_model, x, y, "pgd", **kw)
    hard = evaluate(OneHot(digits_model), x, y, "pgd", **kw)
    assert hard.attack == "hsj" and hard.variant == "escalated" and "queries=2000" in hard.params
    assert hard.robust_acc <= plain.robust_acc + 0.1
    assert hard.robust_acc < 0.8  # PGD alone: the clean accuracy, about 99%
