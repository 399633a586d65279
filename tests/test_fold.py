"""The folded inference copy (models/fold.py): same logits as the model, only where it is safe,
one snapshot per attack call, used by QueryCounter only for no-grad inference queries, and
Square's, Sparse-RS's and the one-pixel attack's successes on it re-checked on the model itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fragility.attacks.base as base
from fragility.attacks.base import QueryCounter
from fragility.attacks.onepixel import OnePixel
from fragility.attacks.sparse_rs import SparseRS
from fragility.attacks.square import Square
from fragility.models.cifar_resnet import build
from fragility.models.fold import folded_copy, why_not


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resnet8(seed: int = 0) -> nn.Module:
    """A CIFAR ResNet-8 with random weights and non-trivial BatchNorm statistics (folding them
    into the convolutions changes the weights)."""
    torch.manual_seed(seed)
    model = build(8)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_folded_copy_matches_the_model_and_leaves_it_alone():
    model = resnet8()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = folded_copy(model)
    assert copy is not None and copy is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), copy(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_no_copy_where_it_is_not_safe():
    model = resnet8()
    model.train()
    assert why_not(model) == "in training mode" and folded_copy(model) is None
    model.eval()
    handle = model.net.layer1.register_forward_hook(lambda *a: None)  # Grad-CAM-like hook on a block
    assert why_not(model) == "hooks registered" and folded_copy(model) is None
    handle.remove()
    model.forward = model.forward  # a per-instance forward (what model.compile=true installs)
    assert folded_copy(model) is None
    assert why_not(NoBN().eval()) == "no BatchNorm"
    randomized = resnet8()
    randomized.randomized = True  # what a randomized defense declares (defenses/base.py)
    assert why_not(randomized) == "randomized" and folded_copy(randomized) is None


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x)).mean((2, 3))
        return x.mean((2, 3))


def test_untraceable_model_gets_none():
    assert why_not(Untraceable().eval()) is None
    assert folded_copy(Untraceable().eval()) is None


def test_each_copy_follows_the_weights_of_its_time():
    model = resnet8()
    first = folded_copy(model)
    with torch.no_grad():
        model.net.conv1.weight.mul_(2.0)  # an in-place update (an optimizer step, load_state_dict)
    second = folded_copy(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(second(x), model(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(first(x), model(x), atol=1e-3)  # a copy is a snapshot: one per attack call


class Spy(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_query_counter_uses_the_copy_only_for_no_grad_inference_queries():
    model = resnet8()
    spy = Spy(model).eval()
    counter = QueryCounter(spy, 4)
    x = torch.rand(4, 3, 32, 32)
    assert counter.has_folded_copy
    with torch.no_grad():
        counter(x, inference=True)
    assert spy.calls == 0  # through the folded copy
    counter(x, inference=True)  # gradients enabled: always the model itself
    with torch.no_grad():
        counter(x)
    assert spy.calls == 2
    assert counter.counts.tolist() == [3, 3, 3, 3]  # every query counts, whichever path ran it


class AlwaysFooled(nn.Module):
    """A copy that lies: class 1 wins for every image."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10) + x.flatten(1).mean(1, keepdim=True) * 0
        logits[:, 1] = 5.0
        return logits


class AlwaysClassZero(nn.Module):
    def forward(self, x):
        logits = torch.zeros(len(x), 10) + x.flatten(1).mean(1, keepdim=True) * 0
        logits[:, 0] = 5.0
        return logits


def test_square_rechecks_successes_of_the_copy_on_the_model(monkeypatch):
    monkeypatch.setattr(base, "folded_copy", lambda model: AlwaysFooled())
    x, y = torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    res = Square(eps=0.1, queries=50)(AlwaysClassZero(), x, y)
    assert not res.success.any()  # the copy claimed a success at every query; the model never did
    assert (res.queries <= 50).all() and (res.queries >= 49).all()  # the re-checks count, inside the cap
    off = Square(eps=0.1, queries=50, fold_bn=False)(AlwaysClassZero(), x, y)
    assert (off.queries == 50).all()  # without the copy: no re-checks, every query a candidate


def test_square_with_the_copy_attacks_like_without_it():
    model = resnet8(seed=3)
    x = torch.rand(12, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    spy = Spy(model).eval()
    on = Square(eps=8 / 255, queries=200)(spy, x, y)
    calls_on = spy.calls
    off = Square(eps=8 / 255, queries=200, fold_bn=False)(spy, x, y)
    assert calls_on < (spy.calls - calls_on) / 5  # with the copy the model itself runs only re-checks
    assert abs(int(on.success.sum()) - int(off.success.sum())) <= 2
    assert (on.adv - x).abs().amax() <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert (model(on.adv[on.success]).argmax(1) != y[on.success]).all()
    assert Square(fold_bn=False).params()["fold_bn"] is False and "fold_bn" not in Square().params()


@pytest.mark.parametrize(
    "make",
    [
        lambda fold: SparseRS(k=1, queries=40, fold_bn=fold),  # the k = 1 walk
        lambda fold: SparseRS(k=3, queries=40, fold_bn=fold),  # random search
        lambda fold: SparseRS(mode="patch", size=2, queries=40, universal=True, fold_bn=fold),
        lambda fold: OnePixel(popsize=10, maxiter=3, fold_bn=fold),
        lambda fold: OnePixel(popsize=10, maxiter=3, precision="bf16", fold_bn=fold),
    ],
    ids=["sparse_rs_k1", "sparse_rs_k3", "sparse_rs_universal", "onepixel", "onepixel_bf16"],
)
def test_sparse_attacks_recheck_successes_of_the_copy_on_the_model(monkeypatch, make):
    monkeypatch.setattr(base, "folded_copy", lambda model: AlwaysFooled())
    x, y = torch.rand(3, 3, 8, 8), torch.zeros(3, dtype=torch.long)
    res = make(True)(AlwaysClassZero(), x, y)
    assert not res.success.any()  # the copy claimed a success for every candidate; the model never did
    off = make(False)(AlwaysClassZero(), x, y)
    assert not off.success.any()
    assert (res.queries > off.queries).all()  # the re-checks are queries too


@pytest.mark.parametrize("attack", ["sparse_rs", "onepixel"])
def test_sparse_attacks_with_the_copy_attack_like_without_it(attack):
    model = resnet8(seed=0)
    torch.manual_seed(0)
    x = nn.functional.interpolate(torch.rand(10, 3, 4, 4), size=32, mode="bilinear")  # smooth: small margins
    with torch.no_grad():
        y = model(x).argmax(1)
    make = {
        # one image per model call, so that calls count images
        "sparse_rs": lambda fold: SparseRS(k=5, queries=150, max_batch=1, fold_bn=fold),
        "onepixel": lambda fold: OnePixel(pixels=10, popsize=20, maxiter=5, max_batch=1, fold_bn=fold),
    }[attack]
    spy = Spy(model).eval()
    on = make(True)(spy, x, y)
    calls_on = spy.calls
    off = make(False)(spy, x, y)
    assert calls_on < (spy.calls - calls_on) / 3  # with the copy the model itself runs only re-checks
    assert off.success.any() and abs(int(on.success.sum()) - int(off.success.sum())) <= 2
    with torch.no_grad():
        assert (model(on.adv[on.success]).argmax(1) != y[on.success]).all()
    assert make(False).params()["fold_bn"] is False and "fold_bn" not in make(True).params()
