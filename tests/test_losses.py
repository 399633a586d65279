"""The attack objectives of attacks/losses.py (each to ascend), and the ``loss=`` option of FGSM/PGD:
margin and DLR see through logits multiplied by 1000, where cross-entropy saturates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fragility.attacks import FGSM, PGD
from fragility.attacks.gradient import loss_gradient
from fragility.attacks.losses import ce, dlr, get_loss, margin
from fragility.errors import ConfigError


class Scaled(nn.Module):
    """A model whose logits are multiplied by ``factor`` (softmax saturates; predictions unchanged)."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_values_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    t = torch.tensor([1, 2])
    assert torch.allclose(margin(z, y), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))
    assert torch.allclose(margin(z, y, t), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))
    # DLR: -(z_y - max other) / (z_pi1 - z_pi3); targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    assert torch.allclose(dlr(z, y), torch.tensor([-(3.0 - 1.0) / (3.0 - 0.0), -(2.0 - 5.0) / (5.0 - 1.0)]))
    assert torch.allclose(dlr(z, y, t), torch.tensor([-(3.0 - 1.0) / (3.0 + 0.5), -(2.0 - 5.0) / (5.0 - 0.5)]))
    assert torch.allclose(ce(z, y), F.cross_entropy(z, y, reduction="none"))
    assert torch.allclose(ce(z, y, t), -F.cross_entropy(z, t, reduction="none"))


def test_margin_positive_exactly_when_fooled():
    z = torch.randn(200, 10)
    y = torch.randint(0, 10, (200,))
    t = (y + 1) % 10
    assert torch.equal(margin(z, y) > 0, z.argmax(1) != y)
    assert torch.equal(margin(z, y, t) > 0, z.argmax(1) == t)


def test_dlr_is_scale_and_shift_invariant_ce_is_not():
    z = torch.randn(50, 10)
    y = torch.randint(0, 10, (50,))
    t = (y + 3) % 10
    assert torch.allclose(dlr(1000 * z + 7, y), dlr(z, y), atol=1e-4)
    assert torch.allclose(dlr(1000 * z + 7, y, t), dlr(z, y, t), atol=1e-4)
    assert not torch.allclose(ce(1000 * z, y), ce(z, y))


def test_unknown_loss_rejected():
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss("hinge")
    with pytest.raises(ConfigError, match="unknown loss"):
        PGD(loss="hinge")


def test_default_ce_gradient_unchanged(tiny_model, tiny_batch):
    x, y = tiny_batch
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(tiny_model(xr), y, reduction="sum"), xr)
    assert torch.equal(loss_gradient(tiny_model, x, y, None), want)
    assert torch.allclose(loss_gradient(tiny_model, x, y, None, "margin"), loss_gradient(tiny_model, x, y, None, "margin"))
    assert PGD().params() == {"norm": "linf", "eps": 8 / 255, "steps": 10, "restarts": 1}  # old rows keep their key
    assert PGD(loss="margin").params()["loss"] == "margin"


def test_margin_pgd_sees_through_scaled_logits(digits_model, digits_test):
    """The issue's measured case on digits: logits x1000 hide the model from PGD-ce, not from margin/DLR."""
    x, y = digits_test.images(torch.arange(120)), digits_test.y[:120]
    scaled = Scaled(digits_model, 1000.0)
    plain = PGD(eps=0.2, steps=10)(digits_model, x, y).success.float().mean()
    ce_scaled = PGD(eps=0.2, steps=10)(scaled, x, y).success.float().mean()
    for loss in ("margin", "dlr"):
        res = PGD(eps=0.2, steps=10, loss=loss)(scaled, x, y)
        assert res.success.float().mean() >= plain - 0.05, loss
        assert (res.adv - x).abs().max() <= 0.2 + 1e-6
    assert ce_scaled < plain - 0.3  # the gradient masking the issue measured
    assert FGSM(eps=0.2, loss="margin")(scaled, x, y).success.float().mean() > FGSM(eps=0.2)(scaled, x, y).success.float().mean()
