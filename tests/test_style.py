"""Style transfer, the stylize attack, cue-conflict sets and shape bias (issue 16).

Tiny models and a few optimisation steps: the whole file runs in seconds, offline, on the digits."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from conftest import make_tiny
from torch import nn

from fragility.attacks.shape_bias import ShapeBias, build_cue_conflict, read_meta, save_cue_conflict, shape_bias
from fragility.attacks.style_transfer import (
    FeatureExtractor,
    content_loss,
    gram,
    pick_textures,
    style_loss,
    style_transfer,
)
from fragility.attacks.stylize import Stylize
from fragility.datasets import Digits, ImageSet, Npz
from fragility.errors import ConfigError, InputError
from fragility.models.wrapper import Classifier


# ---- Gram matrix and losses against a hand computation ---------------------------------------------
def test_gram_matches_hand_computation():
    f = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    a, b = [1.0, 2.0, 0.0, -1.0], [3.0, 0.0, 1.0, 1.0]
    dot = lambda u, v: sum(x * y for x, y in zip(u, v)) / 4  # H*W = 4
    expected = torch.tensor([[[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]]])
    assert torch.allclose(gram(f), expected)
    assert torch.allclose(gram(f)[0], torch.tensor([[1.5, 0.5], [0.5, 2.75]]))


def test_losses_match_hand_computation():
    f, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 3.0]])
    assert content_loss(f.view(1, 3, 1, 1), t.view(1, 3, 1, 1)).item() == pytest.approx(4.0 / 10.0)  # |(0,2,0)|^2 / |t|^2
    g1, t1 = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    g2, t2 = torch.tensor([[[1.0]]]), torch.tensor([[[2.0]]])
    # layer 1: 1 / 2; layer 2: 1 / 4; mean 0.375
    assert style_loss([g1, g2], [t1, t2]).item() == pytest.approx(0.375)


def test_feature_extractor_reads_named_layers_through_the_wrapper():
    model = make_tiny()
    seen = {}
    model.net.conv.register_forward_pre_hook(lambda m, i: seen.update(input=i[0]))
    ext = FeatureExtractor(model, content_layer="conv", style_layers=["conv"])
    x = torch.rand(2, 3, 8, 8)
    feats = ext(x)
    assert torch.allclose(seen["input"], (x - 0.5) / 0.25)  # normalization happened in the Classifier, not here
    assert feats["conv"].shape == (2, 8, 8, 8)
    with pytest.raises(ConfigError, match="no layer"):
        FeatureExtractor(model, content_layer="nope")


# ---- style transfer -------------------------------------------------------------------------------
def test_strength_zero_returns_the_content_exactly(tiny_model, tiny_batch):
    x, _ = tiny_batch
    style = torch.rand_like(x)
    for init in ("content", "noise"):
        out = style_transfer(FeatureExtractor(tiny_model), x, style, strength=0.0, steps=5, init=init)
        assert torch.equal(out.images, x)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": -0.1}, "lr must be positive"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"style_weight": -1}, "style_weight must be >= 0"),
    ],
)
def test_style_transfer_refuses_settings_that_transfer_nothing(tiny_model, tiny_batch, bad, match):
    """fragility-style steps=0 built a 'cue-conflict' set of unchanged content images and scored
    a shape bias of 99.6% on it."""
    x, _ = tiny_batch
    with pytest.raises(ConfigError, match=match):
        style_transfer(FeatureExtractor(tiny_model), x, torch.rand_like(x), **bad)


def test_style_transfer_lowers_style_loss_and_mixed_strengths_are_per_image(tiny_model, tiny_batch):
    x, _ = tiny_batch
    style = torch.rand_like(x).roll(1, 0)
    s = torch.tensor([0.0, 1.0] * 6)
    out = style_transfer(FeatureExtractor(tiny_model), x, style, strength=s, steps=30, lr=0.05, style_weight=30)
    assert torch.equal(out.images[0::2], x[0::2])
    assert bool((out.style_loss[1::2] < out.start_style_loss[1::2]).all())
    with pytest.raises(ConfigError):
        style_transfer(FeatureExtractor(tiny_model), x, style, strength=1.5)


def test_pick_textures_takes_another_class():
    labels = torch.tensor([0, 1, 2, 0])
    pool = torch.tensor([0, 0, 1, 2, -1])
    for u in (torch.zeros(4), torch.full((4,), 0.999), torch.rand(4)):
        idx = pick_textures(labels, pool, u)
        assert bool((pool[idx] != labels).all())
    assert pick_textures(torch.tensor([0]), pool, torch.zeros(1)).item() == 2  # the first eligible
    with pytest.raises(InputError):
        pick_textures(torch.tensor([0]), torch.tensor([0, 0]), torch.zeros(1))


# ---- the stylize attack ---------------------------------------------------------------------------
def test_stylize_attack_on_digits(digits_model, digits_test):
    x, y = digits_test.images(slice(0, 16)), digits_test.y[:16]
    train = Digits("train").load(None, 0)
    atk = Stylize(strength=1.0, steps=10, lr=0.05).set_textures(train.x, train.y, name="digits-train")
    res = atk(digits_model, x, y)
    assert bool((res.extras["texture_label"] != y).all())
    assert not torch.equal(res.adv, x)
    assert atk.norm == "style" and atk.budget == 1.0
    assert res.queries[0] > 10  # the attacked model is the feature network: every step is a query
    # a batch gives the same images as one image at a time
    alone = atk(digits_model, x[3:4], y[3:4])
    assert torch.allclose(alone.adv, res.adv[3:4], atol=1e-5)
    zero = Stylize(strength=0, textures="batch")(digits_model, x, y)
    assert torch.equal(zero.adv, x)
    assert torch.equal(zero.success, digits_model(x).argmax(1) != y)  # success only where it was wrong already
    m = atk.extra_metrics(res)
    assert m["median_style_reduction"] > 1 and 0 <= m["to_texture_class"] <= 1


def test_stylize_with_a_separate_feature_network_and_a_picture_folder(tmp_path, tiny_batch):
    from PIL import Image

    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((20, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / f"p{i}.png")
    x, y = tiny_batch
    target, features = make_tiny(seed=1), make_tiny(seed=2)
    atk = Stylize(strength=0.5, textures=str(tmp_path), features=features, steps=3)
    res = atk(target, x, y)
    assert res.queries.tolist() == [0] * len(x)  # the target model is only asked for the verdict
    assert bool((res.extras["texture_label"] == -1).all())
    with pytest.raises(ConfigError, match="texture"):
        Stylize(strength=1.0)(target, x, y)  # textures=dataset with no pool


# ---- cue conflict and shape bias ------------------------------------------------------------------
def test_shape_bias_hand_count():
    ys = torch.tensor([0, 1, 2, 3, 4, 5])
    yt = torch.tensor([1, 2, 3, 4, 5, 6])
    pred = torch.tensor([0, 1, 3, 4, 9, 5])  # shape, shape, texture, texture, other, shape
    out = shape_bias(pred, ys, yt)
    assert out["shape_bias"] == pytest.approx(3 / 5)
    assert (out["shape_decisions"], out["texture_decisions"], out["other_decisions"], out["shape_bias_n"]) == (3, 2, 1, 5)
    lo, hi = out["shape_bias_ci"]
    assert lo < 0.6 < hi


class _Planted(nn.Module):
    """Reads one half of a 2-channel image: channel 0 encodes the shape class, channel 1 the texture class."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x):
        level = x[:, self.channel].mean((1, 2))  # class k is stored as the level k/10
        return -((level[:, None] - torch.arange(10.0) / 10) ** 2) * 1e4


def test_shape_bias_of_planted_models_is_zero_and_one():
    ys, yt = torch.arange(10), (torch.arange(10) + 3) % 10
    x = torch.stack([ys.float() / 10, yt.float() / 10], 1)[:, :, None, None].expand(10, 2, 4, 4)
    planted = lambda c: Classifier(_Planted(c), mean=[0, 0], std=[1, 1], input_size=(2, 4, 4), class_names=list("0123456789"))
    atk = ShapeBias(cue_conflict="unused.npz")
    assert atk.score(planted(0), x, ys, yt)["shape_bias"] == 1.0  # reads only shape
    assert atk.score(planted(1), x, ys, yt)["shape_bias"] == 0.0  # reads only texture


def _tiny_digits(n: int, split: str, seed: int) -> ImageSet:
    return Digits(split).load(n, seed)


def test_cue_conflict_set_carries_both_labels_and_reads_back(tmp_path, digits_model):
    content, textures = _tiny_digits(12, "test", 0), _tiny_digits(200, "train", 1)
    cc = build_cue_conflict(FeatureExtractor(digits_model), content, textures, steps=3, batch_size=5)
    assert bool((cc.y_shape == content.y).all()) and bool((cc.y_shape != cc.y_texture).all())
    train_y = dict(zip(textures.ids.tolist(), textures.y.tolist()))
    assert [train_y[int(i)] for i in cc.texture_id] == cc.y_texture.tolist()  # the texture label is its image's label
    path = save_cue_conflict(tmp_path / "cc.npz", cc, content.class_names, {"settings": {"k": 1}})
    back = Npz(str(path)).load(None, 0)  # dataset=npz reads it: y is the shape label
    order = back.ids
    assert torch.equal(back.y, cc.y_shape[order]) and torch.equal(back.x, cc.x[order])
    with np.load(path) as f:
        assert f["y_texture"].tolist() == cc.y_texture.tolist()
    assert read_meta(path)["settings"] == {"k": 1}


def test_shape_bias_through_the_runner_on_digits(tmp_path, cfg_factory, digits_model):
    from fragility.benchmarks.runner import run

    content, textures = _tiny_digits(30, "test", 0), _tiny_digits(300, "train", 1)
    cc = build_cue_conflict(FeatureExtractor(digits_model), content, textures, steps=5)
    path = save_cue_conflict(tmp_path / "cc.npz", cc, content.class_names, {})
    cfg = cfg_factory("attack=shape_bias", "dataset=npz", f"dataset.path={path}", "n_samples=30")
    rec = run(cfg)
    extra = json.loads(rec.extra_json)
    expected = shape_bias(digits_model(cc.x.float() / 255).argmax(1), cc.y_shape, cc.y_texture)
    for k in ("shape_bias", "shape_bias_n", "shape_decisions", "texture_decisions"):
        assert extra[k] == expected[k]
    assert rec.clean_acc == pytest.approx(expected["shape_decisions"] / 30)
    db = sqlite3.connect(tmp_path / "results" / "results.sqlite")
    stored = json.loads(db.execute("select extra_json from runs where attack='shape_bias'").fetchone()[0])
    assert stored["shape_bias"] == expected["shape_bias"]


def test_stylize_through_the_runner_on_digits(cfg_factory):
    from fragility.benchmarks.runner import run

    rec = run(cfg_factory("attack=stylize", "attack.strength=1", "attack.steps=5", "n_samples=20"))
    assert rec.attack == "stylize" and rec.norm == "style" and rec.eps == 1.0
    zero = run(cfg_factory("attack=stylize", "attack.strength=0", "attack.steps=5", "n_samples=20"))
    assert zero.robust_acc == zero.clean_acc


def test_style_app_builds_once_and_scores(tmp_path, monkeypatch):
    import sys

    from fragility.benchmarks import style

    base = [f"results_dir={tmp_path}", "n_samples=20", "steps=3", "progress=false", "texture_n=200"]
    monkeypatch.setattr(sys, "argv", ["fragility-style", *base])
    style.main()
    path = tmp_path / "style" / "cue_conflict-digits.npz"
    meta = read_meta(path)
    assert meta["n"] == 20 and set(meta["quality"]) >= {"median_style_reduction", "median_content_loss"}
    stamp = path.stat().st_mtime_ns
    style.main()  # same settings: reused, not rebuilt
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.setattr(sys, "argv", ["fragility-style", *base[:-1], "texture_n=100", "mode=build"])
    with pytest.raises(SystemExit) as e:
        style.main()
    assert e.value.code == 2


def test_shape_bias_without_a_cue_conflict_set_is_a_one_line_error(cfg_factory):
    from fragility.benchmarks.runner import run

    with pytest.raises(ConfigError, match="cue-conflict npz"):
        run(cfg_factory("attack=shape_bias", "n_samples=5"))
