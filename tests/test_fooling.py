"""Fooling images, the shared ascent loop, priors and class/filter visualization."""

from __future__ import annotations

import json

import pytest
import torch

from fragility.attacks.ascent import ascend, step_direction
from fragility.attacks.fooling import Fooling
from fragility.attacks.priors import (
    PRESETS,
    Blur,
    ContributionClip,
    Jitter,
    L2Decay,
    NormClip,
    build_priors,
    preset,
    total_variation,
)
from fragility.benchmarks.visualize import channel_activation, find_layer, visualize_classes, visualize_filters
from fragility.errors import ConfigError
from fragility.rng import SampleRNG, mix64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # two cores shared by several jobs: more threads than cores makes these small models crawl
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- fooling ----------------------------------------------------------------------------------
def test_fooling_digits_all_classes_reach_confidence(digits_model):
    x = torch.zeros(10, 1, 8, 8)
    res = Fooling(target="all", steps=200)(digits_model, x, torch.zeros(10, dtype=torch.long), keys=torch.arange(10))
    assert res.targets.tolist() == list(range(10))
    assert res.success.all()
    assert (res.extras["target_conf"] >= 0.9999).all()
    assert (res.pred == res.targets).all()
    steps = res.extras["steps"]
    assert ((steps >= 1) & (steps <= 200)).all()
    # the loop stops each sample when it is done: queries = steps + the final check
    assert torch.equal(res.queries, steps + 2) or torch.equal(res.queries, steps + 1)


def test_fooling_success_is_the_confidence_criterion(digits_model):
    # unreachable threshold in 2 steps: the target may be predicted, but success must be False
    res = Fooling(target=3, steps=2, confidence=0.999999)(digits_model, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert torch.equal(res.success, res.extras["target_conf"] >= 0.999999)
    assert not res.success.any()


def test_fooling_targets_cycle_and_resolve_names(tiny_model):
    labels = torch.zeros(7, dtype=torch.long)
    assert Fooling(target="all").make_targets(tiny_model, labels).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert Fooling(target=[2, "c5"]).make_targets(tiny_model, labels).tolist() == [2, 5, 2, 5, 2, 5, 2]
    assert Fooling(target="c4").make_targets(tiny_model, labels).tolist() == [4] * 7
    for bad in (dict(target=None), dict(target=[]), dict(confidence=1.0), dict(init="zeros"), dict(prior="nope"), dict(steps=0)):
        with pytest.raises(ConfigError):
            Fooling(**bad)


def test_fooling_batch_equals_one_at_a_time(tiny_model, tiny_batch):
    x, y = tiny_batch
    keys = torch.arange(len(x)) * 7 + 1
    atk = Fooling(target="all", steps=30, confidence=0.99)
    full = atk(tiny_model, x, y, keys=keys)
    for i in (0, 5, 11):
        one = atk(tiny_model, x[i : i + 1], y[i : i + 1], targets=full.targets[i : i + 1], keys=keys[i : i + 1])
        assert torch.allclose(one.adv[0], full.adv[i], atol=1e-6)
        assert int(one.extras["steps"][0]) == int(full.extras["steps"][i])


def test_fooling_ignores_image_content_but_not_seed(tiny_model):
    atk = Fooling(target=1, steps=3)
    a = atk(tiny_model, torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), keys=torch.tensor([5]))
    b = atk(tiny_model, torch.ones(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), keys=torch.tensor([5]))
    c = atk(tiny_model, torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), keys=torch.tensor([6]))
    assert torch.equal(a.adv, b.adv) and not torch.equal(a.adv, c.adv)
    const = Fooling(target=1, steps=1, init="constant", init_value=0.25, step_size=0.01)
    r = const(tiny_model, torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))
    assert torch.allclose((r.adv - 0.25).abs(), torch.full_like(r.adv, 0.01), atol=1e-6)


@pytest.mark.shared
def test_fooling_resnet20_all_classes_within_200_steps(shared_dir):
    from fragility.models.cifar_resnet import build

    model = build(20, str(shared_dir / "models" / "cifar10" / "resnet20-12fca82f.th"))
    res = Fooling(target="all", steps=200)(
        model, torch.zeros(10, 3, 32, 32), torch.zeros(10, dtype=torch.long), keys=torch.arange(10)
    )
    assert res.success.all() and (res.extras["target_conf"] >= 0.9999).all()


def test_fooling_through_the_runner(cfg_factory):
    from fragility.benchmarks.runner import run

    rec = run(cfg_factory("attack=fooling", "n_samples=20"))
    assert rec.attack == "fooling" and rec.targeted and rec.norm == "none"
    extra = json.loads(rec.extra_json)
    assert extra["fooling_success_rate"] == 1.0 and 1 <= extra["max_steps"] <= 200
    assert any(f.endswith("fooling.png") for f in extra["figures"])


# ---- ascent loop and priors --------------------------------------------------------------------
def test_ascend_stops_done_samples_and_follows_the_policy():
    x0 = torch.zeros(3, 1, 2, 2)
    w = torch.tensor([1.0, 2.0, 3.0])

    def objective(x, idx):  # score rises linearly; sample i is done once its mean exceeds 0.1 * (i + 1)
        s = x.flatten(1).mean(1) * w[idx]
        return s, x.detach().flatten(1).mean(1) >= 0.1 * (idx + 1)

    out = ascend(objective, x0, steps=50, lr=0.05, policy="sign")
    assert out.steps.tolist() == [2, 4, 6] and out.done.all()
    g = torch.tensor([[[[3.0, -4.0]]]])
    assert torch.allclose(step_direction(g, "rms", 1.0).pow(2).mean(), torch.tensor(1.0))
    assert torch.allclose(step_direction(g, "constant", 255.0**2), g)
    assert torch.allclose((step_direction(g, "progress", 0, max_lr=1e9, desired_prog=2.0) * g).sum(), torch.tensor(2.0))


def test_ascend_keep_best_undoes_a_late_setback():
    from fragility.attacks.priors import Prior

    class ResetAt(Prior):  # a regularizer that throws the image back to the center at step 3
        def regularize(self, x, grad, step, center):
            return center.expand_as(x).clone() if step == 3 else x

    def objective(x, idx):
        return x.flatten(1).mean(1), None

    x0 = torch.full((2, 1, 2, 2), 0.5)
    last = ascend(objective, x0, steps=4, lr=0.1, policy="sign", priors=[ResetAt()])
    best = ascend(objective, x0, steps=4, lr=0.1, policy="sign", priors=[ResetAt()], keep_best=True)
    assert torch.allclose(last.x, torch.full_like(x0, 0.5))
    assert torch.allclose(best.x, torch.full_like(x0, 0.8)) and torch.allclose(best.score, torch.full((2,), 0.8))


def test_priors_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    c = torch.full((1, 3, 1, 1), 0.5)
    assert torch.allclose(L2Decay(0.5).regularize(x, x, 0, c) - 0.5, (x - 0.5) * 0.5, atol=1e-6)
    blurred = Blur(1.0, every=4).regularize(x, x, 0, c)
    assert (total_variation(blurred) < 0.5 * total_variation(x)).all()
    assert torch.equal(Blur(1.0, every=4).regularize(x, x, 1, c), x)  # only every 4th step
    clipped = NormClip(50).regularize(x, x, 0, c)
    at_center = (clipped == 0.5).all(1).flatten(1).float().mean(1)
    assert torch.allclose(at_center, torch.full((2,), 0.5), atol=0.01)
    grad = torch.zeros_like(x)
    grad[:, :, :8] = 1.0  # the top half contributes far more than the bottom half
    grad[:, :, 8:] = 1e-3
    kept = ContributionClip(50).regularize(x, grad, 0, c)
    assert (kept[:, :, 8:] == 0.5).all(1).float().mean() > 0.9
    assert (kept[:, :, :8] == 0.5).all(1).float().mean() < 0.1
    rng = SampleRNG(mix64(torch.tensor([1, 2])))
    j = Jitter(3).transform(x, 0, rng, torch.tensor([0, 1]))
    assert j.shape == x.shape and torch.allclose(j.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-3)  # a cyclic shift
    assert len(build_priors(decay=1e-4, blur=1.0, jitter=2, norm_pct=10, contrib_pct=10)) == 5


def test_yosinski_presets_match_table_1():
    assert list(PRESETS) == ["yosinski1", "yosinski2", "yosinski3", "yosinski4"]
    p3 = preset("yosinski3")
    assert (p3.steps, p3.policy, p3.lr) == (1000, "constant", 100.0)
    kinds = {type(p).__name__: vars(p) for p in p3.priors}
    assert kinds == {"L2Decay": {"rate": 1e-4}, "Blur": {"sigma": 1.0, "every": 4}}
    assert {type(p).__name__ for p in preset("yosinski1").priors} == {"Blur", "NormClip"}
    assert preset("yosinski2").priors[0].rate == 0.3
    assert preset("yosinski4").priors[-1].percentile == 90
    with pytest.raises(ConfigError):
        preset("simonyan")


# ---- class and filter visualization ------------------------------------------------------------
def test_class_visualization_priors_lower_total_variation(digits_model):
    plain = visualize_classes(digits_model, "all", prior=None, steps=60, policy="rms", lr=0.05)
    smooth = visualize_classes(
        digits_model, "all", prior=None, priors=[L2Decay(0.01), Blur(1.0, every=1)], steps=60, policy="rms", lr=0.05
    )
    assert smooth.images.shape == (10, 1, 8, 8)
    assert total_variation(smooth.images).mean() < 0.6 * total_variation(plain.images).mean()
    with torch.no_grad():
        pred = digits_model(smooth.images).argmax(1)
    assert (pred == torch.arange(10)).float().mean() >= 0.8


def test_filter_visualization_cifar_resnet_far_above_random():
    from fragility.models.cifar_resnet import build
    from fragility.models.digits_cnn import build as build_digits

    torch.manual_seed(0)
    model = build(20)
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(16, 3, 32, 32, generator=g)
    for layer in ("conv1", "layer2.0.conv1", "layer3.2.conv2"):
        vis = visualize_filters(model, layer, [0, 5, 9], steps=50, lr=0.05)
        mod = find_layer(model, layer)
        with torch.no_grad():
            rand = torch.stack([channel_activation(model, mod, noise, torch.full((16,), c)) for c in (0, 5, 9)])
        z = (vis.score - rand.mean(1)) / rand.std(1)  # in standard deviations of random images' activations
        assert (z > 10).all(), (layer, z)
    with pytest.raises(ConfigError, match=r"no layer 'layer9.conv' .*conv1, layer1.0.conv1, .* \.\.\. .*layer3.2.conv2\)"):
        visualize_filters(model, "layer9.conv", [0])
    with pytest.raises(ConfigError, match=r"\(conv layers: conv1, conv2, conv3\)$"):  # a short list in full, once
        find_layer(build_digits(), "nope")
    with pytest.raises(ConfigError):
        visualize_filters(model, "conv1", [16], steps=1)


@pytest.mark.parametrize(
    "arch,layer", [("vgg16", "features.5"), ("inception_v3", "Conv2d_4a_3x3.conv"), ("inception_v3", "Mixed_5b.branch1x1.conv")]
)
def test_filter_visualization_imagenet_nets_random_weights(arch, layer):
    """Random weights, 2 steps (224/299 px inputs are slow on CPU): the channel's activation rises.
    The "far above random images" comparison with more steps is in benchmarks/peers/bench_fooling.py."""
    from fragility.models.torchvision_models import build

    torch.manual_seed(0)
    model = build(arch)
    start = visualize_filters(model, layer, [0, 1], steps=0).score
    score = visualize_filters(model, layer, [0, 1], steps=2, lr=0.01).score
    assert (score > start).all(), (score, start)


def _compose_visualize(tmp_path, *overrides):
    from hydra import compose, initialize_config_module

    import fragility.benchmarks.config  # noqa: F401  (frac resolver)

    with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
        return compose(config_name="visualize", overrides=[f"results_dir={tmp_path}", *overrides])


def test_visualize_entry_point_writes_pictures(tmp_path, digits_model):
    from fragility.benchmarks.visualize import run_visualize

    out = run_visualize(_compose_visualize(tmp_path, "mode=class", "steps=5", "device=cpu"))
    (path,) = out.values()
    assert path.is_file() and path.parent == tmp_path / "visualize"
    out = run_visualize(
        _compose_visualize(
            tmp_path, "mode=filter", "layer=conv2", "channels=[0,1]", "preset=null", "steps=3", "jitter=1", "device=cpu"
        )
    )
    assert next(iter(out.values())).is_file()
    for bad in (["mode=filter"], ["mode=dream"], ["mode=filter", "layer=conv9"], ["preset=yosinski9"]):
        with pytest.raises(ConfigError):
            run_visualize(_compose_visualize(tmp_path, "steps=1", "device=cpu", *bad))
