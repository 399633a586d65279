"""The gradient-masking checks on models that mask by construction (and on one that does not),
honest query counts through EOT and smoothing, and the eps bound under float rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fragility.attacks.gradient import project
from fragility.attacks.pgd import PGD
from fragility.attacks.square import Square
from fragility.benchmarks.checks import CheckSettings, budget_flags, gradient_flags, output_flags, run_checks
from fragility.benchmarks.escalation import eot_model
from fragility.defenses import adaptive_mode
from fragility.defenses.smoothing import Smoothing
from fragility.models.wrapper import Classifier


class Trick(nn.Module):
    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        if self.kind == "round":
            x = torch.round(x * 4) / 4
        if self.kind == "noise":
            x = x + 0.1 * torch.randn_like(x)
        z = self.net((x - 0.31) / 0.38)
        if self.kind == "scale":
            z = z * 1000
        if self.kind == "nan":
            z = z + torch.sqrt((x - x.detach()).flatten(1).sum(1, keepdim=True)) * 0
        return z


def _wrap(digits_model, kind):
    return Classifier(
        Trick(digits_model.net, kind), mean=[0.0], std=[1.0], input_size=(1, 8, 8), class_names=digits_model.class_names
    )


@pytest.fixture(scope="module")
def probe(digits_test):
    return digits_test.images(slice(0, 64)), digits_test.y[:64]


def _names(flags):
    return {f.name for f in flags}


def test_honest_model_passes_every_check(digits_model, probe):
    x, y = probe
    assert gradient_flags(digits_model, x, y) == [] and output_flags(digits_model, x) == []
    attack = PGD(eps=0.1, steps=10)
    res = attack(digits_model, x, y)
    flags = run_checks(digits_model, x, y, res.success, attack=attack, make_attack=lambda **kw: PGD(**{"eps": 0.1, **kw}))
    assert flags == []


def test_scaled_logits_zero_gradient_and_saturation(digits_model, probe):
    x, y = probe
    m = _wrap(digits_model, "scale")
    assert _names(gradient_flags(m, x, y)) == {"zero_grad"}
    assert _names(output_flags(m, x)) == {"saturated"}
    assert gradient_flags(m, x, y, loss="margin") == []  # the escalation's loss sees through it


def test_rounding_zero_gradient_unbounded_and_blackbox(digits_model, probe):
    x, y = probe
    m = _wrap(digits_model, "round")
    assert _names(gradient_flags(m, x, y)) == {"zero_grad"}
    res = PGD(eps=0.1)(m, x, y)
    flags = budget_flags(m, x, y, res.success, lambda **kw: PGD(**{"eps": 0.1, **kw}), norm="linf")
    assert _names(flags) == {"unbounded", "blackbox"}


def test_noise_inside_is_random(digits_model, probe):
    x, _ = probe
    assert _names(output_flags(_wrap(digits_model, "noise"), x)) == {"random"}


def test_nonfinite_gradient(digits_model, probe):
    x, y = probe
    assert "nonfinite_grad" in _names(gradient_flags(_wrap(digits_model, "nan"), x, y))


def test_checks_skip_attacks_without_gradients(digits_model, probe):
    x, y = probe
    m = _wrap(digits_model, "scale")
    assert run_checks(m, x, y, torch.zeros(64, dtype=torch.bool), attack=Square(eps=0.1, queries=10)) == []
    assert (
        run_checks(m, x, y, torch.zeros(64, dtype=torch.bool), attack=PGD(eps=0.1), settings=CheckSettings(enabled=False)) == []
    )


class RowCounter(nn.Module):
    """Counts the images the network really processes (one row = one forward pass of one image)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x):
        self.rows += len(x)
        return self.net(x)


def test_queries_through_eot_equal_real_forward_passes(digits_model, probe):
    x, y = probe[0][:8], probe[1][:8]
    counter = RowCounter(Trick(digits_model.net, "noise"))
    inner = Classifier(counter, mean=[0.0], std=[1.0], input_size=(1, 8, 8), class_names=digits_model.class_names)
    m = eot_model(inner, 5)
    with adaptive_mode(m, True):
        res = PGD(eps=0.1, steps=3)(m, x, y)
    final = len(x)  # the base class's last, uncounted judgement of the returned images
    assert (res.queries == 15).all() and counter.rows - final == res.queries.sum().item()


def test_queries_through_smoothing_count_votes(digits_model, probe):
    x, y = probe[0][:4], probe[1][:4]
    counter = RowCounter(digits_model.net)
    inner = Classifier(counter, mean=[0.31], std=[0.38], input_size=(1, 8, 8), class_names=digits_model.class_names)
    m = Smoothing(sigma=0.25, n0=7, n=10, certify=False).wrap(inner)
    res = Square(eps=0.1, queries=5)(m, x, y)
    final = 7 * len(x)
    assert counter.rows - final == res.queries.sum().item() and (res.queries % 7 == 0).all()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5)])
def test_eps_never_exceeded_even_by_rounding(norm, eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 16, 16, generator=g)
    adv = project(x + torch.randn(x.shape, generator=g), x, norm, eps).clamp(0, 1)
    d = adv.double() - x.double()
    size = d.abs().flatten(1).amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert size.max().item() <= eps
    if norm == "linf":  # and the ball is used: the boundary is reached up to one float step
        assert size.max().item() >= eps - 1e-7


class CoinFlip(nn.Module):
    """Class 0 wins by a margin that logit noise overturns on about 1 draw in 5, whatever the
    input (the input enters only through a tiny slope, so gradients exist and mean nothing)."""

    def forward(self, x):
        base = torch.zeros(len(x), 10)
        base[:, 0] = 1.2
        return base + 1e-3 * x.flatten(1).mean(1, keepdim=True) + torch.randn(len(x), 10) * 0.5


def test_blackbox_on_a_random_model_is_judged_over_draws():
    """Square stops at its first lucky draw, so one draw makes it look stronger than a gradient
    attack on a randomized model; judged by the majority of draws, neither breaks anything."""
    torch.manual_seed(0)
    m = Classifier(CoinFlip(), mean=[0.0], std=[1.0], input_size=(1, 8, 8), class_names=[str(i) for i in range(10)]).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)
    assert _names(output_flags(m, x)) == {"random"}
    lost = torch.zeros(64, dtype=torch.bool)  # the gradient attack broke nothing
    make = lambda **kw: PGD(**{"eps": 0.1, "steps": 5, **kw})
    settings = CheckSettings(square_queries=50)
    assert "blackbox" in _names(budget_flags(m, x, y, lost, make, norm="linf", settings=settings))
    assert "blackbox" not in _names(budget_flags(m, x, y, lost, make, norm="linf", random=True, settings=settings))
    flags = run_checks(m, x, y, lost, attack=make(), make_attack=make, settings=settings)
    assert "random" in _names(flags) and "blackbox" not in _names(flags)


def test_impossible_draw_count_stops_before_any_work(cfg_factory, monkeypatch):
    from fragility.benchmarks.runner import Trial, run
    from fragility.errors import ConfigError

    def no_build(*a, **k):
        raise AssertionError("the run started before its settings were checked")

    monkeypatch.setattr(Trial, "build", no_build)
    cfg = cfg_factory("n_samples=8", "attack=pgd", "+checks.random_draws=0")
    with pytest.raises(ConfigError, match="random_draws must be >= 1"):
        run(cfg)
