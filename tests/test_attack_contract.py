"""The attack contract, one table of cases over tiny models (FGSM and PGD, Linf and L2)."""

from __future__ import annotations

import pytest
import torch

from fragility.attacks import FGSM, PGD
from fragility.errors import ConfigError, InputError

CASES = {
    "fgsm-linf": lambda **kw: FGSM(eps=0.1, **kw),
    "fgsm-l2": lambda **kw: FGSM(eps=0.5, norm="l2", **kw),
    "pgd-linf": lambda **kw: PGD(eps=0.1, steps=5, **kw),
    "pgd-l2": lambda **kw: PGD(eps=0.5, norm="l2", steps=5, **kw),
    "pgd-restarts": lambda **kw: PGD(eps=0.05, steps=3, restarts=3, **kw),
}


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    d = delta.flatten(1)
    return d.abs().max(1).values if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("name", CASES)
def test_budget_and_range_never_exceeded(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = CASES[name]()
    res = attack(tiny_model, x, y)
    assert res.adv.shape == x.shape
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert (_size(res.adv - x, attack.norm) <= attack.eps + 1e-5).all()
    assert res.success.dtype == torch.bool and len(res.success) == len(x)


@pytest.mark.parametrize("name", CASES)
def test_batch_equals_one_at_a_time(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = CASES[name](seed=3)
    batch = attack(tiny_model, x, y)
    for i in range(len(x)):
        one = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(one.adv[0], batch.adv[i], atol=1e-5, rtol=0)
        assert bool(one.success[0]) == bool(batch.success[i])
        assert int(one.queries[0]) == int(batch.queries[i])


@pytest.mark.parametrize("name", CASES)
def test_eps_zero_changes_nothing(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = type(CASES[name]())(eps=0)
    res = attack(tiny_model, x, y)
    assert torch.equal(res.adv, x)
    with torch.no_grad():
        assert torch.equal(res.pred, tiny_model(x).argmax(1))


def test_seed_determinism_and_difference(tiny_model, tiny_batch):
    x, y = tiny_batch
    a = PGD(eps=0.1, steps=2, seed=1)(tiny_model, x, y).adv
    b = PGD(eps=0.1, steps=2, seed=1)(tiny_model, x, y).adv
    c = PGD(eps=0.1, steps=2, seed=2)(tiny_model, x, y).adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_targeted_reaches_target(digits_model, digits_test):
    x, y = digits_test.images(slice(0, 40)), digits_test.y[:40]
    keep = y != 3
    res = PGD(eps=0.4, steps=40, target=3)(digits_model, x[keep], y[keep])
    assert (res.targets == 3).all()
    assert res.success.float().mean() >= 0.9
    assert torch.equal(res.success, res.pred == 3)


def test_untargeted_attack_lowers_accuracy(digits_model, digits_test):
    x, y = digits_test.images(slice(0, 100)), digits_test.y[:100]
    clean = (digits_model(x).argmax(1) == y).float().mean()
    res = PGD(eps=0.3, steps=10)(digits_model, x, y)
    assert (res.pred == y).float().mean() < clean - 0.5


def test_queries_counted_once_per_forward(tiny_model, tiny_batch):
    x, y = tiny_batch
    assert FGSM(eps=0.1)(tiny_model, x, y).queries.tolist() == [1] * len(x)
    assert PGD(eps=0.1, steps=7)(tiny_model, x, y).queries.tolist() == [7] * len(x)
    # restarts add one bookkeeping forward each
    assert PGD(eps=0.1, steps=2, restarts=3)(tiny_model, x, y).queries.tolist() == [9] * len(x)


def test_confidences_are_probabilities(tiny_model, tiny_batch):
    x, y = tiny_batch
    res = FGSM(eps=0.1)(tiny_model, x, y)
    p = torch.softmax(tiny_model(res.adv), 1)
    torch.testing.assert_close(res.pred_conf, p.max(1).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.true_conf, p.gather(1, y[:, None]).squeeze(1), atol=1e-5, rtol=0)


def test_eval_mode_restored_even_on_error(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.train()

    class Boom(FGSM):
        def _run(self, model, images, labels, targets, rng):
            assert not model.training
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Boom(eps=0.1)(tiny_model, x, y)
    assert tiny_model.training and tiny_model.net.training


@pytest.mark.parametrize(
    "make, err",
    [
        (lambda: FGSM(eps=-0.1), ConfigError),
        (lambda: PGD(eps="-8/255"), ConfigError),
        (lambda: PGD(eps="abc"), ConfigError),
        (lambda: PGD(eps=0.1, steps=0), ConfigError),
        (lambda: PGD(eps=0.1, norm="l7"), ConfigError),
    ],
)
def test_impossible_budgets_rejected(make, err):
    with pytest.raises(err):
        make()


def test_fraction_budget():
    assert FGSM(eps="8/255").eps == pytest.approx(8 / 255)
    assert FGSM(eps="8/255").describe() == "norm=linf eps=8/255"


def test_bad_images_rejected(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(InputError, match="expects 3x8x8"):
        FGSM(eps=0.1)(tiny_model, torch.rand(2, 3, 16, 16), y[:2])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        FGSM(eps=0.1)(tiny_model, x * 3, y)
    with pytest.raises(InputError, match="labels"):
        FGSM(eps=0.1)(tiny_model, x, y[:3])


def test_an_linf_budget_above_the_pixel_range_is_refused():
    """eps = 8 meant as 8/255 would silently allow any image; L2 budgets may exceed 1."""
    from fragility.attacks import APGD, FGSM, PGD, Square
    from fragility.errors import ConfigError

    for cls in (FGSM, PGD, APGD, Square):
        with pytest.raises(ConfigError, match=r"eps=8 is more than 1.*8/255"):
            cls(eps=8)
    assert PGD(eps=1).eps == 1.0 and PGD(eps=2, norm="l2").eps == 2.0


def test_nan_images_and_out_of_range_labels_are_input_errors(tiny_model, tiny_batch):
    """NaN passes every range comparison, so it needs its own check; a label beyond the model's
    classes was an IndexError from deep inside the attack."""
    x, y = tiny_batch
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN or Inf values \(1 of"):
        PGD(eps=0.1, steps=1)(tiny_model, bad, y)
    with pytest.raises(InputError, match=r"labels must be class indices in \[0, \d+\), got 99"):
        FGSM(eps=0.1)(tiny_model, x, torch.full_like(y, 99))
    with pytest.raises(InputError, match="got -1"):
        FGSM(eps=0.1)(tiny_model, x, torch.full_like(y, -1))
