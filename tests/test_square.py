"""Square: inside the Linf / L2 ball and [0, 1], no gradients (works through a model whose backward
raises), the paper's schedule, batch invariance, queries capped and stopped at success."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fragility.attacks.square import Square, p_schedule, pseudo_gaussian
from fragility.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_p_schedule_follows_the_paper():
    assert p_schedule(0, 10000, 0.8) == 0.8
    assert p_schedule(10, 10000, 0.8) == 0.8
    assert p_schedule(11, 10000, 0.8) == 0.4
    assert p_schedule(201, 10000, 0.8) == 0.8 / 8
    assert p_schedule(9000, 10000, 0.8) == 0.8 / 512
    assert p_schedule(500, 1000, 0.8) == 0.8 / 128  # rescaled clock: step 500 of 1000 is 5000 of 10k


def test_pseudo_gaussian_block():
    b = pseudo_gaussian(5, torch.tensor([False, True]))
    assert b.shape == (2, 1, 5, 5)
    assert torch.allclose(b.flatten(1).norm(dim=1), torch.ones(2))
    assert (b[0, 0, :2] > 0).all() and (b[0, 0, 2:] < 0).all()  # two halves of opposite sign
    assert torch.allclose(b[1, 0], b[0, 0].t())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_threat_model_and_range(norm, eps, tiny_model, tiny_batch):
    x, y = tiny_batch
    res = Square(eps=eps, norm=norm, queries=60)(tiny_model, x, y)
    d = res.adv - x
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
    else:
        assert d.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert (res.queries >= 1).all() and (res.queries <= 60).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.5)])
def test_works_without_gradients(norm, eps, digits_model, digits_test):
    x, y = digits_test.images(torch.arange(40)), digits_test.y[:40]
    box = Blackbox(digits_model)
    with pytest.raises(RuntimeError, match="backward called"):
        xr = x.clone().requires_grad_(True)
        box(xr).sum().backward()
    res = Square(eps=eps, norm=norm, queries=300)(box, x, y)
    assert res.success.float().mean() > 0.5
    # queries stop at success: a fooled image spent fewer than the budget (most need far fewer)
    assert res.queries[res.success].float().median() < 300
    assert (res.queries[~res.success] == 300).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_batch_equals_one_at_a_time(norm, eps, tiny_model, tiny_batch):
    x, y = tiny_batch
    att = Square(eps=eps, norm=norm, queries=40)
    full = att(tiny_model, x, y)
    for i in (0, 5):
        one = att(tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.allclose(one.adv[0], full.adv[i], atol=1e-6)
        assert one.queries[0] == full.queries[i]


def test_targeted(digits_model, digits_test):
    x, y = digits_test.images(torch.arange(30)), digits_test.y[:30]
    t = (y + 1) % 10
    res = Square(eps=0.3, queries=300)(digits_model, x, y, targets=t)
    assert res.success.float().mean() > 0.3
    assert torch.equal(res.pred[res.success], t[res.success])


class LiesInBf16(nn.Module):
    """Under bf16 autocast every image looks fooled (class 1 wins); in fp32 class 0 always wins."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10) + x.flatten(1).mean(1, keepdim=True) * 0
        col = 1 if torch.is_autocast_enabled(x.device.type) else 0
        logits[:, col] = 5.0
        return logits


def test_bf16_success_is_rechecked_in_fp32():
    x, y = torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    res = Square(eps=0.1, queries=50, precision="bf16")(LiesInBf16(), x, y)
    assert not res.success.any()  # bf16 claimed a success at every query; fp32 never confirmed one
    assert (res.queries <= 50).all() and (res.queries >= 49).all()  # the re-checks count, inside the cap


def test_bf16_attacks_like_fp32(digits_model, digits_test):
    x, y = digits_test.images(torch.arange(40)), digits_test.y[:40]
    fp32 = Square(eps=0.2, queries=300)(digits_model, x, y)
    bf16 = Square(eps=0.2, queries=300, precision="bf16")(digits_model, x, y)
    assert (bf16.queries <= 300).all()
    assert bf16.success.float().mean() >= fp32.success.float().mean() - 0.1
    # every success is one in fp32: the base call judges the returned images without autocast
    with torch.no_grad():
        assert (digits_model(bf16.adv[bf16.success]).argmax(1) != y[bf16.success]).all()


def test_bad_config():
    with pytest.raises(ConfigError):
        Square(precision="fp16")
    with pytest.raises(ConfigError):
        Square(queries=0)
    with pytest.raises(ConfigError):
        Square(norm="l1")
