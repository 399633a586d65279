"""One-pixel attack: budget, targeting, early stop, batch invariance, determinism, and a
cross-check of the batched differential evolution against SciPy's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fragility.attacks.differential_evolution import distinct_others, evolve
from fragility.attacks.onepixel import OnePixel, paint
from fragility.errors import ConfigError
from fragility.models.wrapper import Classifier
from fragility.rng import SampleRNG


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and it keeps these tests quick on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class HotPixelNet(nn.Module):
    """Three classes on 3x8x8 images. Class 0 has a fixed logit; class 1 grows with the red
    channel near (2, 2), class 2 with the blue channel near (6, 5) (Gaussian weight bumps). A
    mid-grey image is class 0, and a single pixel fools it only near a bump: the search has to
    find the place. An image that is black in those regions cannot be fooled by one pixel."""

    def __init__(self) -> None:
        super().__init__()
        r, c = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("w1", torch.exp(-((r - 2) ** 2 + (c - 2) ** 2) / 2.0))
        self.register_buffer("w2", torch.exp(-((r - 6) ** 2 + (c - 5) ** 2) / 2.0))

    def forward(self, x):
        x = x * 0.25 + 0.5  # undo the wrapper's normalization: the bumps read [0, 1] colours
        l1 = 4 * ((x[:, 0] - 0.5) * self.w1).sum((1, 2))
        l2 = 4 * ((x[:, 2] - 0.5) * self.w2).sum((1, 2))
        return torch.stack([torch.ones_like(l1), l1, l2], 1)


@pytest.fixture
def hot_model():
    return Classifier(
        HotPixelNet(), mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, 8, 8), class_names=["a", "b", "c"], name="hot"
    )


def grey_images(n: int, seed: int = 0, hard: int = 0) -> torch.Tensor:
    """``n`` mid-grey images with a little noise; the last ``hard`` are black (unfoolable)."""
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.02 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    if hard:
        x[n - hard :] = 0.02 * torch.rand(hard, 3, 8, 8, generator=g)
    return x


def changed_pixels(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (adv != x).any(1).flatten(1).sum(1)


@pytest.mark.parametrize("k", [1, 3])
def test_budget_k_pixels_and_range(k, tiny_model, tiny_batch):
    x, y = tiny_batch
    res = OnePixel(pixels=k, popsize=12, maxiter=3)(tiny_model, x, y)
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    pos, old, new = res.extras["positions"], res.extras["old"], res.extras["new"]
    assert pos.shape == (len(x), k, 2) and old.shape == new.shape == (len(x), k, 3)
    distinct = torch.tensor([len({tuple(p) for p in s.tolist()}) for s in pos])
    assert torch.equal(changed_pixels(res.adv, x), distinct)  # each changed pixel is one of the k
    assert (distinct >= 1).all() and (distinct <= k).all()
    if k == 1:
        n = torch.arange(len(x))
        assert torch.equal(res.adv.permute(0, 2, 3, 1)[n, pos[:, 0, 0], pos[:, 0, 1]], new[:, 0])
        assert torch.equal(x.permute(0, 2, 3, 1)[n, pos[:, 0, 0], pos[:, 0, 1]], old[:, 0])
        assert ((new >= 0) & (new <= 1)).all()


def test_project_keeps_at_most_k_pixels(tiny_batch):
    x, _ = tiny_batch
    noisy = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    out = OnePixel(pixels=2).project(noisy, x)
    assert (changed_pixels(out, x) <= 2).all()


def test_untargeted_success_and_early_stop_saves_queries(hot_model):
    x = grey_images(6, hard=2)
    y = torch.zeros(6, dtype=torch.long)
    pop, maxiter = 16, 30
    res = OnePixel(popsize=pop, maxiter=maxiter, seed=1)(hot_model, x, y)
    gens = res.extras["generations"]
    assert res.success[:4].all() and not res.success[4:].any()
    full = pop * (maxiter + 1)
    assert (res.queries[4:] == full).all()  # hopeless images spend the whole budget
    assert torch.equal(res.queries[:4], pop * (gens[:4] + 1))  # finished images stop costing queries
    assert (res.queries[:4] < full).all()
    # the fooling pixel sits on the red bump and is bright red, or on the blue bump and bright blue
    pos, new = res.extras["positions"][:4, 0], res.extras["new"][:4, 0]
    red = ((pos - torch.tensor([2, 2])).abs().max(1).values <= 2) & (new[:, 0] > 0.6) & (res.pred[:4] == 1)
    blue = ((pos - torch.tensor([6, 5])).abs().max(1).values <= 2) & (new[:, 2] > 0.6) & (res.pred[:4] == 2)
    assert (red | blue).all()


def test_targeted_mode(hot_model):
    x = grey_images(4)
    y = torch.zeros(4, dtype=torch.long)
    res = OnePixel(popsize=16, maxiter=40, target=2, seed=0)(hot_model, x, y)
    assert torch.equal(res.targets, torch.full((4,), 2))
    assert res.success.all() and (res.pred == 2).all()
    pos = res.extras["positions"][:, 0]
    assert ((pos - torch.tensor([6, 5])).abs().max(1).values <= 2).all()  # on the blue bump
    assert (res.extras["new"][:, 0, 2] > 0.6).all()
    # targeted without a class: a fixed other class per image, success means that class
    a = OnePixel(popsize=8, maxiter=1, targeted=True)
    t = a.make_targets(hot_model, torch.tensor([0, 1, 2]))
    assert a.targeted and (t != torch.tensor([0, 1, 2])).all()
    res = a(hot_model, x[:3], torch.tensor([0, 1, 2]))
    assert torch.equal(res.success, res.pred == res.targets)


def test_batch_equals_one_at_a_time(hot_model):
    x = grey_images(5, seed=3, hard=1)
    y = torch.zeros(5, dtype=torch.long)
    attack = OnePixel(popsize=10, maxiter=8, seed=4, max_batch=7)
    batch = attack(hot_model, x, y)
    for i in range(len(x)):
        one = attack(hot_model, x[i : i + 1], y[i : i + 1])
        assert bool(one.success[0]) == bool(batch.success[i])
        assert int(one.queries[0]) == int(batch.queries[i])
        assert torch.equal(one.adv[0], batch.adv[i])
        assert torch.equal(one.extras["positions"][0], batch.extras["positions"][i])


def test_seed_determinism(tiny_model, tiny_batch):
    x, y = tiny_batch
    a = OnePixel(popsize=8, maxiter=2, seed=5)(tiny_model, x, y)
    b = OnePixel(popsize=8, maxiter=2, seed=5)(tiny_model, x, y)
    c = OnePixel(popsize=8, maxiter=2, seed=6)(tiny_model, x, y)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.extras["positions"], c.extras["positions"])


def test_bf16_successes_are_confirmed_in_fp32(hot_model):
    x = grey_images(4, hard=1)
    y = torch.zeros(4, dtype=torch.long)
    res = OnePixel(popsize=16, maxiter=20, precision="bf16", seed=1)(hot_model, x, y)
    assert res.success[:3].all() and not res.success[3]
    gens = res.extras["generations"]
    # each generation in which bf16 saw a success costs one float32 re-check
    assert (res.queries[:3] >= 16 * (gens[:3] + 1) + 1).all()


def test_distinct_others_is_uniform_and_distinct():
    rng = SampleRNG(torch.arange(50))
    r1, r2, r3 = distinct_others(rng, torch.arange(50), 6, 3)
    me = torch.arange(6).expand(50, 6)
    for a, b in [(r1, me), (r2, me), (r3, me), (r1, r2), (r1, r3), (r2, r3)]:
        assert (a != b).all()
    counts = torch.bincount(r1.flatten(), minlength=6).float()
    assert counts.min() > 0.6 * counts.mean()


@pytest.mark.parametrize(("strategy", "mutation"), [("rand1", 0.5), ("best1", (0.5, 1.0))])
def test_de_matches_scipy_on_the_attack_objective(hot_model, strategy, mutation):
    """Same objective (the true-class probability after painting one pixel), same budget:
    the batched DE's minima are as low as SciPy's differential_evolution's, within noise."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    x, y = grey_images(6, seed=2), torch.zeros(6, dtype=torch.long)
    pop, maxiter = 20, 15
    hw = torch.tensor([8.0, 8.0])

    def prob(cand: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = torch.softmax(hot_model(paint(x, owner, cand.view(len(cand), 1, 5))), 1)
        return p.gather(1, y[owner][:, None]).squeeze(1)

    def objective(c, idx):
        f = prob(c.reshape(-1, 5), idx.repeat_interleave(c.shape[1])).view(c.shape[:2])
        return f, torch.zeros_like(f, dtype=torch.bool)  # never "done": run the whole budget

    def repair(t, idx, rng):
        pos = torch.where((t[..., :2] < 0) | (t[..., :2] >= hw), rng.uniform(pop, 2, idx=idx) * hw, t[..., :2])
        return torch.cat([pos, t[..., 2:].clamp(0, 1)], -1)

    ours, theirs = [], []
    for seed in range(3):
        rng = SampleRNG(torch.arange(6) + 100 * seed)
        init = torch.cat([rng.uniform(pop, 2) * hw, rng.uniform(pop, 3)], -1)
        res = evolve(objective, init, rng, torch.arange(6), maxiter=maxiter, repair=repair, strategy=strategy, mutation=mutation)
        assert torch.allclose(res.fitness, prob(res.x, torch.arange(6)))
        ours.append(res.fitness)
        for i in range(6):
            # vectorized: SciPy hands the whole population (D, P) to one call per generation
            f = lambda v, i=i: prob(torch.tensor(v.T, dtype=torch.float32), torch.full((v.shape[1],), i)).numpy()
            r = scipy_opt.differential_evolution(
                f,
                [(0, 8 - 1e-6), (0, 8 - 1e-6), (0, 1), (0, 1), (0, 1)],
                strategy=strategy + "bin",
                maxiter=maxiter,
                popsize=pop // 5,
                mutation=mutation,
                recombination=1.0,
                init="random",
                polish=False,
                tol=0,
                atol=0,
                rng=seed,
                vectorized=True,
                updating="deferred",
            )
            theirs.append(r.fun)
    ours_mean = float(torch.cat(ours).mean())
    theirs_mean = float(np.mean(theirs))
    start = float(prob(torch.cat([torch.full((6, 2), 4.0), x.permute(0, 2, 3, 1)[:, 4, 4]], 1), torch.arange(6)).mean())
    assert ours_mean < start  # the search did something
    assert ours_mean <= theirs_mean + 0.05 * max(theirs_mean, 1e-3) + 0.01, (ours_mean, theirs_mean)


def test_dithered_mutation_draws_f_per_image_and_generation():
    rng = SampleRNG(torch.arange(4))
    scales = []

    def objective(pop, idx):
        return pop.sum(-1), torch.zeros(pop.shape[:2], dtype=torch.bool)

    real = rng.uniform

    def spy(*shape, idx=None):
        out = real(*shape, idx=idx)
        if shape == (1, 1):
            scales.append(out.flatten().clone())
        return out

    rng.uniform = spy
    init = torch.rand(4, 6, 2, generator=torch.Generator().manual_seed(0))
    evolve(objective, init, rng, torch.arange(4), maxiter=5, mutation=[0.5, 1.0], strategy="best1")
    f = 0.5 + 0.5 * torch.stack(scales)  # (generations, images)
    assert f.shape == (5, 4) and (f >= 0.5).all() and (f < 1.0).all()
    assert len(set(f.flatten().tolist())) == f.numel()  # a fresh F for every image and generation


def test_margin_loss_orders_by_distance_to_the_boundary(hot_model):
    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.2, -5.0]]), 1)
    y = torch.tensor([0, 0, 0])
    fit, ok = OnePixel._score(logp, y, False, "margin")
    assert torch.allclose(fit, torch.tensor([1.0, -3.0, -0.2]), atol=1e-6)
    assert torch.equal(ok, fit < 0)  # untargeted: negative margin exactly when fooled
    fit_t, ok_t = OnePixel._score(logp, torch.tensor([1, 1, 1]), True, "margin")
    assert torch.allclose(fit_t, torch.tensor([1.0, -2.0, -0.2]), atol=1e-6) and torch.equal(ok_t, fit_t < 0)
    # the margin attack solves the same problems and is batch-invariant with a dithered F too
    x = grey_images(5, seed=2, hard=1)
    y = torch.zeros(5, dtype=torch.long)
    attack = OnePixel(popsize=12, maxiter=25, loss="margin", strategy="best1", mutation=(0.5, 1.0), seed=3, max_batch=9)
    res = attack(hot_model, x, y)
    assert res.success[:4].all() and not res.success[4]
    assert (changed_pixels(res.adv, x) <= 1).all()
    for i in (0, 4):
        one = attack(hot_model, x[i : i + 1], y[i : i + 1])
        assert torch.equal(one.adv[0], res.adv[i]) and int(one.queries[0]) == int(res.queries[i])


def test_config_errors():
    for kw in (
        {"pixels": 0},
        {"popsize": 3},
        {"strategy": "best2"},
        {"precision": "fp8"},
        {"crossover": 1.5},
        {"max_batch": 0},
        {"loss": "hinge"},
        {"mutation": (1.0, 0.5)},
        {"mutation": (0.0, 1.0)},
        {"mutation": "big"},
    ):
        with pytest.raises(ConfigError):
            OnePixel(**kw)


def test_config_instantiates_and_runner_hooks(tmp_path, hot_model):
    from types import SimpleNamespace

    from conftest import compose

    from fragility.benchmarks.config import safe_instantiate

    cfg = compose(["attack=onepixel", "attack.pixels=3", "attack.precision=bf16", "seed=7"])
    attack = safe_instantiate(cfg.attack, [])
    assert isinstance(attack, OnePixel) and attack.pixels == 3 and attack.seed == 7 and attack.budget == 3.0
    assert attack.name == "onepixel" and attack.norm == "l0" and not attack.needs_gradients
    assert "precision=bf16" in attack.describe()

    x = grey_images(5, hard=1)
    y = torch.zeros(5, dtype=torch.long)
    res = OnePixel(popsize=12, maxiter=10, seed=1)(hot_model, x, y)
    extra = OnePixel().extra_metrics(res)
    assert extra["mean_generations"] == pytest.approx(float(res.extras["generations"].float().mean()))
    assert extra["mean_queries_success"] < 12 * 11
    with torch.no_grad():
        conf, pred = torch.softmax(hot_model(x), 1).max(1)
    ctx = SimpleNamespace(
        examples={"clean": x, "adv": res.adv, "labels": y, "idx": torch.arange(5)},
        model=hot_model,
        device=torch.device("cpu"),
        clean_pred=pred,
        clean_conf=conf,
        run_dir=tmp_path,
    )
    from fragility.benchmarks.figures import ATTACK_FIGURES

    figs = ATTACK_FIGURES["onepixel"](ctx, OnePixel())
    assert figs["onepixel"].is_file() and figs["onepixel"].stat().st_size > 1000


def test_benchmark_judges_every_method_in_eval_mode():
    """The benchmark's counting wrapper must not leave the network in training mode (torchattacks
    calls ``model.train()`` after an attack when the model it got said ``training``), and its one
    judge must score outputs in eval mode and refuse outputs over the pixel budget."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))
    from bench_onepixel import judge
    from common import Counting

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(2, 3, 8, 8))
    net.eval()
    wrapped = Counting(net)
    assert not wrapped.training  # a fresh nn.Module would say True
    x = grey_images(3)
    y = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        want = net(x).argmax(1) != y
    net.train()  # what a peer may leave behind
    ok, l0 = judge(net, x, x.clone(), y, pixels=1)
    assert torch.equal(ok, want) and net.training and (l0 == 0).all()
    adv = x.clone()
    adv[0, :, 0, 0] = 1.0
    adv[0, :, 1, 1] = 1.0
    with pytest.raises(SystemExit, match="over the budget"):
        judge(net, x, adv, y, pixels=1)
    assert int(judge(net, x, adv, y, pixels=2)[1][0]) == 2
