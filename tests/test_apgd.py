"""APGD and APGD-T: the paper's checkpoints and step-size halving, threat models and [0, 1], EOT
queries, batch invariance, and the DLR loss seeing through logits x1000."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fragility.attacks.apgd import APGD, StepControl, checkpoints
from fragility.attacks.apgd_t import APGDT
from fragility.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Constant(nn.Module):
    """Logits that do not depend on the input: the loss never rises, the gradient is zero."""

    def forward(self, x):
        return torch.tensor([[3.0, 1.0, 0.5, 0.0]]).expand(len(x), 4) + 0 * x.flatten(1).sum(1, keepdim=True)


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N)
    p, want = [0.0, 0.22], []
    while p[-1] <= 1:
        want.append(math.ceil(round(p[-1] * 100, 9)))
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert checkpoints(100) == want == [22, 41, 57, 70, 80, 87, 93, 99]


def test_halving_conditions():
    steps = 100
    hist = torch.zeros(steps + 1, 3)
    # image 0: the loss rises every step; image 1: flat (no rise); image 2: rises, then drops and
    # climbs back without beating its best (many rises, no improvement: condition 2)
    hist[:, 0] = torch.arange(steps + 1).float()
    hist[:23, 2] = torch.arange(23).float()
    hist[23:42, 2] = torch.arange(19).float() * 0.1 + 10.0
    control = StepControl(steps, hist[0])
    best = hist[0].clone()
    halvings = {}
    for i in range(1, 42):
        best = torch.maximum(best, hist[i])
        h = control.check(hist[: i + 1], i, best)
        if h.any():
            halvings[i] = h.tolist()
        else:
            assert i not in (22, 41)
    assert halvings == {22: [False, True, False], 41: [False, True, True]}


def test_step_halves_at_every_checkpoint_when_the_loss_never_rises():
    x = torch.rand(3, 1, 4, 4)
    y = torch.zeros(3, dtype=torch.long)
    # with EOT (a randomized model) a zero gradient is no reason to stop: all 100 steps run
    res = APGD(eps=0.1, steps=100, eot_iter=2)(Constant(), x, y)
    assert torch.allclose(res.extras["step_size"], torch.full((3,), 2.0 / 2 ** len(checkpoints(100))))
    assert (res.queries == 2 * 101).all()  # the start + one per step, every EOT draw a query


def test_frozen_image_leaves_the_run():
    """A deterministic model with a zero gradient: after one step that did not move, the image leaves."""
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(8, dtype=torch.long)
    res = APGD(eps=0.1, steps=100)(Constant(), x, y)
    assert (res.queries == 2).all()
    assert not res.success.any()


@pytest.mark.parametrize("cls", [APGD, APGDT])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_threat_model_and_range(cls, norm, eps, tiny_model, tiny_batch):
    x, y = tiny_batch
    res = cls(eps=eps, norm=norm, steps=10)(tiny_model, x, y)
    d = res.adv - x
    bound = d.abs().flatten(1).amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert (bound <= eps + 1e-5).all()
    assert res.adv.min() >= 0 and res.adv.max() <= 1


@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_batch_equals_one_at_a_time(cls, tiny_model, tiny_batch):
    x, y = tiny_batch
    att = cls(eps=0.03, steps=12)
    full = att(tiny_model, x, y)
    for i in (0, 7):
        one = att(tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.allclose(one.adv[0], full.adv[i], atol=1e-5)
        assert one.queries[0] == full.queries[i]


def test_dlr_sees_through_scaled_logits(digits_model, digits_test):
    x, y = digits_test.images(torch.arange(80)), digits_test.y[:80]
    plain = APGD(eps=0.1, steps=30)(digits_model, x, y).success.float().mean()
    scaled = Scaled(digits_model, 1000.0)
    ce = APGD(eps=0.1, steps=30)(scaled, x, y).success.float().mean()
    dlr = APGD(eps=0.1, steps=30, loss="dlr")(scaled, x, y).success.float().mean()
    t = APGDT(eps=0.1, steps=30, n_target_classes=3)(scaled, x, y).success.float().mean()
    dlr_plain = APGD(eps=0.1, steps=30, loss="dlr")(digits_model, x, y).success.float().mean()
    assert ce < plain - 0.2  # cross-entropy saturates
    # DLR is invariant to the logits' scale: on the x1000 model it breaks what it breaks unscaled
    # (how that compares with CE on the unscaled model depends on the trained weights: within a few
    # images either way), and far more than saturated CE
    assert abs(dlr - dlr_plain) <= 1 / 80 and dlr > ce + 0.2
    assert t >= plain - 0.05  # APGD-T (targeted DLR) recovers CE's unscaled success


def test_apgd_t_success_is_untargeted_and_targets_rejected(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="own targets"):
        APGDT()(tiny_model, x, y, targets=(y + 1) % 10)
    res = APGDT(eps=0.2, steps=10, n_target_classes=2)(tiny_model, x, y)
    assert torch.equal(res.success, res.pred != y)


def test_bad_config():
    with pytest.raises(ConfigError):
        APGD(steps=0)
    with pytest.raises(ConfigError):
        APGD(rho=1.5)
    with pytest.raises(ConfigError):
        APGD(loss="nope")


def test_more_target_classes_than_the_model_has_are_fitted_and_the_row_says_what_ran(cfg_factory, capsys):
    from fragility.attacks.autoattack import AutoAttack
    from fragility.attacks.fab import FAB
    from fragility.benchmarks.runner import run

    a = APGDT(n_target_classes=20)
    assert a.fit_classes(10) == ["apgd_t: n_target_classes=20 but the model has 10 classes; its 9 other classes are the targets"]
    assert a.params()["n_target_classes"] == 9 and a.fit_classes(10) == []
    assert FAB(targeted=False, n_target_classes=20).fit_classes(10) == []  # untargeted FAB has no targets
    aa = AutoAttack()  # the default 9 on a five-class model: 4 targets in APGD-T and FAB-T, and the row says so
    assert aa.fit_classes(5) and aa.params()["n_target_classes"] == 4
    assert {getattr(x, "n_target_classes", 4) for _, x in aa.attacks} == {4}
    rec = run(cfg_factory("attack=apgd_t", "attack.n_target_classes=20", "attack.steps=2", "n_samples=8"))
    assert "n_target_classes=9" in rec.params and "n_target_classes=20" not in rec.params
    assert "its 9 other classes are the targets" in capsys.readouterr().out
