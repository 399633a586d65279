"""RayS: inside the Linf ball and [0, 1]; reads only labels (the same outcome through a one-hot model,
and through a model whose backward raises); the closed-form boundary of a linear model; batch
invariance; queries capped and stopped at success; and the ``label_only`` check that escalates to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from fragility.attacks.rays import RayS
from fragility.benchmarks.checks import gradient_flags, output_flags
from fragility.benchmarks.escalation import HSJ_TARGET, RAYS_TARGET, SQUARE_TARGET, plan
from fragility.errors import ConfigError
from fragility.models.wrapper import Classifier


class OneHot(nn.Module):
    """A label-only model: the scores are the predicted class's one-hot vector (no autograd graph)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x)
        return F.one_hot(z.argmax(1), z.shape[1]).float() * 10


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward called: this model has no gradients")


class Blackbox(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(NoBackward.apply(x))


def _one_hot(digits_model):
    return Classifier(OneHot(digits_model), mean=[0.0], std=[1.0], input_size=(1, 8, 8), class_names=digits_model.class_names)


@pytest.fixture(scope="module")
def probe(digits_test):
    return digits_test.images(slice(0, 64)), digits_test.y[:64]


def test_inside_the_ball_and_the_box_and_queries_capped(tiny_model, tiny_batch):
    x, y = tiny_batch
    res = RayS(eps=0.05, queries=40)(tiny_model, x, y)
    assert (res.adv - x).abs().max() <= 0.05 + 1e-6
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert (res.queries >= 1).all() and (res.queries <= 40).all()
    none = RayS(eps=0, queries=40)(tiny_model, x, y)  # an empty ball: nothing asked
    assert torch.equal(none.adv, x) and (none.queries == 0).all()


def test_reads_only_labels(digits_model, probe):
    x, y = probe
    plain = RayS(eps=0.1, queries=400)(digits_model, x, y)
    hard = RayS(eps=0.1, queries=400)(_one_hot(digits_model), x, y)
    box = RayS(eps=0.1, queries=400)(Blackbox(digits_model), x, y)
    # the search sees one bit per query, so a model with the same decisions gives the same search
    assert torch.equal(plain.success, hard.success) and torch.equal(plain.queries, hard.queries)
    assert torch.equal(plain.adv, box.adv)
    assert plain.success.float().mean() > 0.25  # digits CNN at Linf 0.1: PGD breaks about 40%
    broken = plain.success
    # an image stops once its boundary is within eps: a broken image spent less than the budget
    assert (plain.queries[broken] < 400).all() and (plain.extras["boundary_dist"][broken] <= 0.1).all()


def test_finds_the_closed_form_boundary_of_a_linear_model():
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
    margin = (z[:, 0] - z[:, 1]).abs()  # = |w . x|
    exact = margin / w.abs().sum()  # Linf distance to the hyperplane w . x = 0 (inside the box here)
    assert (exact < 0.4).all()
    res = RayS(eps=1e-4, queries=3000, tol=1e-5)(model, x, y)
    assert torch.allclose(res.extras["boundary_dist"], exact, atol=1e-4)


def test_a_batch_gives_the_same_result_as_one_image_at_a_time(tiny_model, tiny_batch):
    x, y = tiny_batch
    batch = RayS(eps=0.03, queries=60)(tiny_model, x, y)
    for i in (0, 5, 11):
        one = RayS(eps=0.03, queries=60)(tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.equal(one.adv[0], batch.adv[i]) and int(one.queries[0]) == int(batch.queries[i])


def test_bad_settings(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="Linf"):
        RayS(norm="l2")
    with pytest.raises(ConfigError):
        RayS(queries=0)
    with pytest.raises(ConfigError):
        RayS(tol=0)
    with pytest.raises(ConfigError, match="untargeted"):
        RayS()(tiny_model, x, y, targets=(y + 1) % 10)


def test_label_only_check_fires_on_one_hot_scores_only(digits_model, probe):
    x, y = probe
    hard = _one_hot(digits_model)
    assert {f.name for f in output_flags(hard, x)} >= {"label_only"}
    assert [f.name for f in gradient_flags(hard, x, y)] == ["zero_grad"]  # no autograd graph at all: one line, no error
    assert output_flags(digits_model, x) == []

    class Rounded(nn.Module):  # input rounding: its logits still move with the input
        def forward(self, z):
            return digits_model(torch.round(z * 4) / 4)

    assert "label_only" not in {f.name for f in output_flags(Rounded(), x)}


def test_label_only_escalates_to_rays_where_it_applies():
    pgd = OmegaConf.create({"_target_": "fragility.attacks.pgd.PGD", "eps": 0.1, "norm": "linf", "target": None, "seed": 3})
    p = plan(["zero_grad", "label_only"], pgd)
    assert p.attack._target_ == RAYS_TARGET and p.attack.eps == 0.1 and p.attack.seed == 3
    assert plan(["zero_grad"], pgd).attack._target_ == SQUARE_TARGET  # scores that move: Square, as before
    # RayS is untargeted and Linf: elsewhere HopSkipJump answers, at the same norm, eps and target
    l2 = plan(["label_only"], OmegaConf.merge(pgd, {"norm": "l2", "eps": 0.5})).attack
    assert (l2._target_, l2.norm, l2.eps, l2.queries) == (HSJ_TARGET, "l2", 0.5, 2000)
    targeted = plan(["label_only"], OmegaConf.merge(pgd, {"target": 2})).attack
    assert (targeted._target_, targeted.norm, targeted.target) == (HSJ_TARGET, "linf", 2)
    fab_t = OmegaConf.create({"_target_": "fragility.attacks.fab.FAB", "eps": 0.1, "norm": "linf", "targeted": True})
    assert plan(["label_only"], fab_t).attack._target_ == RAYS_TARGET  # FAB-T's success is untargeted


def test_a_label_only_model_is_not_reported_robust(digits_model, digits_test, tmp_path):
    """The digits analogue of a label-only API: PGD sees zero gradients and Square a flat margin
    (about 96% "robust" at Linf 0.1 before RayS); the escalated row comes near the plain model's."""
    from fragility.benchmarks.evaluate import evaluate

    x, y = digits_test.images(slice(0, 100)), digits_test.y[:100]
    kw = {"eps": 0.1, "steps": 10, "results_dir": tmp_path, "progress": False}
    plain = evaluate(digits_model, x, y, "pgd", **kw)
    hard = evaluate(OneHot(digits_model), x, y, "pgd", **kw)
    assert hard.attack == "rays" and hard.variant == "escalated"
    assert hard.robust_acc <= plain.robust_acc + 0.08


def test_square_on_a_label_only_model_is_flagged_and_answered_by_rays(digits_model, digits_test, tmp_path):
    """Square follows a margin that is flat on one-hot scores: its run is checked for that too."""
    from fragility.benchmarks.evaluate import evaluate

    x, y = digits_test.images(slice(0, 100)), digits_test.y[:100]
    kw = {"eps": 0.1, "queries": 300, "results_dir": tmp_path, "progress": False}
    plain = evaluate(digits_model, x, y, "square", **kw)
    hard = evaluate(OneHot(digits_model), x, y, "square", **kw)
    assert hard.attack == "rays" and hard.variant == "escalated" and "queries=1000" in hard.params
    assert hard.robust_acc <= plain.robust_acc + 0.08
    square = OmegaConf.create({"_target_": SQUARE_TARGET, "eps": 0.1, "norm": "linf", "queries": 5000})
    assert plan(["label_only"], square).attack.queries == 5000  # at least the queries Square was given
    assert plan(["zero_grad"], square) is None
