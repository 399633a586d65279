"""Adversarial patch (attacks/patch.py, attacks/patch_transforms.py): placement, artifacts, training, runner."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny
from PIL import Image

from fragility.attacks.patch import Patch, drop_overlap, read_patch
from fragility.attacks.patch_transforms import SHAPES, apply_patch, n_pixels, placement_mask, random_placement
from fragility.errors import CheckpointError, ConfigError


def _placement(n, h, w, area, shape, rotation=22.5, scale=(0.5, 1.5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return random_placement(n, h, w, area, shape, rotation, scale, lambda k: torch.rand(n, k, generator=g))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_mask_covers_exact_area_at_every_scale_and_angle(shape, hw):
    h, w = hw
    for area in (0.02, 0.1, 0.25):
        pl = _placement(64, h, w, area, shape, rotation=45, scale=(0.3, 2.0))
        _, mask = placement_mask(pl, h, w, area, shape)
        want = torch.round(area * pl.scale.double() * h * w)
        assert torch.equal(mask.sum((1, 2, 3)).long(), want.long())
        # and the covered pixels form one compact blob around the centre, not scattered pixels
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        far = ((xs - pl.cx[:, None, None]) ** 2 + (ys - pl.cy[:, None, None]) ** 2).sqrt() * mask[:, 0]
        radius = torch.sqrt(area * pl.scale * h * w)  # a square's half-diagonal is 0.71 of this
        assert (far.flatten(1).amax(1) <= radius + 1.5).all()


def test_patched_images_stay_in_unit_range_and_only_masked_pixels_change():
    x = torch.rand(16, 3, 32, 32)
    patch = torch.rand(3, 12, 12)
    pl = _placement(16, 32, 32, 0.1, "circle")
    _, mask = placement_mask(pl, 32, 32, 0.1, "circle")
    adv = apply_patch(x, patch, pl, 0.1, "circle")
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv * (1 - mask), x * (1 - mask))
    assert ((adv != x).any(1, keepdim=True).float() <= mask).all()


def test_rotation_and_location_vary_across_the_batch(tiny_model, tiny_batch):
    x, y = tiny_batch
    p = Patch(target=1, area=0.2, steps=2, batch_size=4).fit(tiny_model, x, y)
    res = p(tiny_model, x, y)
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    for k in ("angle", "cx", "cy"):
        assert len(set(res.extras[k].round(decimals=3).tolist())) >= len(x) - 1, k
    assert res.extras["angle"].abs().max() <= 22.5 + 1e-4
    changed = (res.adv != x).any(1).flatten(1).sum(1)
    assert (changed <= n_pixels(0.2, 8, 8)).all() and (changed > 0).all()


def test_batch_equals_one_image_at_a_time(tiny_model, tiny_batch):
    x, y = tiny_batch
    p = Patch(target=1, area=0.2, steps=2, batch_size=4).fit(tiny_model, x, y)
    whole = p(tiny_model, x, y).adv
    alone = torch.cat([p(tiny_model, x[i : i + 1], y[i : i + 1]).adv for i in range(len(x))])
    assert torch.equal(whole, alone)


@pytest.mark.parametrize("shape,channels", [("square", 3), ("circle", 3), ("circle", 1)])
def test_save_load_apply_gives_identical_images(tmp_path, shape, channels):
    model = make_tiny(channels=channels)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, channels, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)
    p = Patch(target="c2", area=0.25, shape=shape, steps=3, batch_size=4).fit(model, x, y)
    png = p.save(tmp_path / "sticker")
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["target"] == "c2" and meta["shape"] == shape and meta["area"] == 0.25 and meta["model"] == "tiny"
    q = Patch(load=str(png))  # everything from the file
    assert (q.target, q.shape, q.area, q.rotation, q.scale) == ("c2", shape, 0.25, 22.5, (0.8, 1.2))
    assert torch.equal(p.patch, q.patch)
    a, b = p(model, x, y), q(model, x, y)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.pred, b.pred)
    assert torch.equal(Patch(load=str(png.with_suffix(".json"))).apply(x), p.apply(x))
    assert Patch(load=str(png), area=0.1).area == 0.1  # explicit arguments override the file


def test_training_moves_targeted_success_up():
    model = make_tiny(seed=3)
    g = torch.Generator().manual_seed(5)
    train_x, train_y = torch.rand(256, 3, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)
    test_x, test_y = torch.rand(200, 3, 8, 8, generator=g), torch.randint(0, 10, (200,), generator=g)
    before = Patch(target=7, area=0.5, steps=0).fit(model, train_x, train_y)  # the random initial patch
    after = Patch(target=7, area=0.5, steps=60, batch_size=32, lr=0.1).fit(model, train_x, train_y)
    s0 = before(model, test_x, test_y).success.float().mean()
    s1 = after(model, test_x, test_y).success.float().mean()
    assert after.history[-1] < after.history[0]
    assert s1 > s0 + 0.2 and s1 > 0.5


def test_held_out_images_are_disjoint_from_training_images(digits_test):
    from fragility.datasets import Digits

    held = Digits("test").load(100, 0)
    train = Digits("test").load(None, 1)  # the same source: every held-out image is in it
    train, dropped = drop_overlap(train, held)
    assert dropped >= 100 and len(train) == len(digits_test) - dropped
    a = {tuple((img * 255).round().int().flatten().tolist()) for img in held.images()}
    b = {tuple((img * 255).round().int().flatten().tolist()) for img in train.images()}
    assert not a & b


def _npz_split(tmp_path, cfg_factory) -> tuple[list[str], str]:
    """A random-weight ResNet-8 and train/test archives labelled with its own predictions (so the
    runner has correctly classified images to attack). Returns overrides and a non-majority target."""
    import numpy as np

    from fragility.benchmarks.runner import build_model

    base = ["model=cifar_resnet", "model.depth=8", "dataset=cifar10_npz", "batch_size=64"]
    torch.manual_seed(0)  # what run() does before building the model
    model = build_model(cfg_factory(*base, f"dataset.path={tmp_path}/test.npz"), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    for split, n in (("train", 200), ("test", 60)):
        x = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            y = model(x.permute(0, 3, 1, 2).float() / 255).argmax(1)
        np.savez(tmp_path / f"{split}.npz", x=x.numpy(), y=y.numpy())
    target = model.class_names[(int(y.mode().values) + 1) % 10]
    return [*base, f"dataset.path={tmp_path}/test.npz", f"attack.train_path={tmp_path}/train.npz"], target


def test_runner_trains_on_train_split_and_scores_held_out(cfg_factory, tmp_path):
    from fragility.benchmarks.runner import run

    common, target = _npz_split(tmp_path, cfg_factory)
    cfg = cfg_factory(
        *common,
        "attack=patch",
        f"attack.target={target}",
        "attack.steps=3",
        "attack.batch_size=16",
        "n_samples=60",
        "attack.curve_areas=[0.1,0.3]",
        f"attack.save={tmp_path / 'p.png'}",
    )
    rec = run(cfg)
    extra = json.loads(rec.extra_json)
    assert rec.attack == "patch" and rec.norm == "patch" and rec.eps == 0.1 and rec.targeted and rec.n_attacked > 0
    assert rec.split == "cifar10-test:heldout" and extra["trained_on"] == "cifar10-train" and extra["n_train"] > 0
    assert extra["dropped_overlap"] == 0
    assert 0 <= extra["untargeted_success"] <= 1 and extra["targeted_success"] == pytest.approx(rec.success_rate)
    assert extra["n_scored"] == rec.n_attacked
    assert any(f.endswith("area_curve.png") for f in extra["figures"])
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["heldout"]["targeted_success"] == pytest.approx(rec.success_rate) and meta["train_data"] == "cifar10-train"
    # re-apply the saved patch with no training: the same images get the same placements
    rec2 = run(cfg_factory(*common, "attack=patch", f"attack.load={tmp_path / 'p.png'}", "n_samples=60"))
    assert rec2.split == "cifar10-test:loaded" and rec2.success_rate == pytest.approx(rec.success_rate)
    assert json.loads(rec2.extra_json)["source"] == "loaded"


def _trial(cfg):
    from fragility.benchmarks.runner import Trial
    from fragility.benchmarks.store import ResultStore

    return Trial.build(cfg, {}, None, ResultStore(cfg.results_dir), n_samples=int(cfg.n_samples), seed=0, batch_size=64)


def test_runner_default_train_split_and_same_source_hold_out(cfg_factory, tmp_path):
    from omegaconf import OmegaConf

    from fragility.datasets import Npz

    cfg = cfg_factory("attack=patch", "attack.target=3", f"results_dir={tmp_path / 'r1'}")
    trial = _trial(cfg)
    train = trial.training_data()  # the embedded default: digits' own train split
    assert train.name == "digits-train" and len(train) > 1000
    common, target = _npz_split(tmp_path, cfg_factory)
    cfg = cfg_factory(
        *[c for c in common if "train_path" not in c],
        "attack=patch",
        f"attack.target={target}",
        "attack.steps=1",
        "attack.batch_size=4",
        "n_samples=20",
        f"results_dir={tmp_path / 'r2'}",
    )
    trial = _trial(cfg)
    assert isinstance(trial.source, Npz) and trial.source.train_split(None) is None  # no train split: the source itself
    train = trial.training_data()
    held_out = replace(trial.data, name="cifar10-test")
    trial.attack.prepare(trial.model, train=train, held_out=held_out, device=torch.device("cpu"), progress=False)
    assert trial.attack._summary["dropped_overlap"] == 20 and trial.attack._summary["trained_on"] == "cifar10-test"
    assert OmegaConf.select(cfg, "attack.train_dataset") is None


def test_bad_files_and_settings_raise_one_line_errors(tmp_path, tiny_model, tiny_batch):
    with pytest.raises(CheckpointError, match="not found"):
        Patch(load=str(tmp_path / "missing.png"))
    p = Patch(target=1, steps=1, batch_size=2).fit(tiny_model, *tiny_batch)
    png = p.save(tmp_path / "ok.png")
    png.write_bytes(b"not a png")
    with pytest.raises(CheckpointError, match="corrupt patch image"):
        Patch(load=str(png))
    p.save(png)
    png.with_suffix(".json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt patch metadata"):
        read_patch(png)
    png.with_suffix(".json").write_text(json.dumps({"format": "fragility-patch/1", "target": "c1"}))
    with pytest.raises(CheckpointError, match="field"):
        read_patch(png)
    p.save(png)
    Image.new("RGB", (5, 7)).save(png)
    with pytest.raises(CheckpointError, match="does not match"):
        read_patch(png)
    with pytest.raises(ConfigError, match="not trained"):
        Patch(target=1)(tiny_model, *tiny_batch)
    with pytest.raises(ConfigError, match="targeted"):
        Patch().fit(tiny_model, *tiny_batch)
    for bad in ({"area": 0}, {"area": 1.5}, {"shape": "star"}, {"scale": [2, 1]}, {"optimizer": "lbfgs"}):
        with pytest.raises(ConfigError):
            Patch(target=1, **bad)


def test_imagenet_models_through_the_same_path(cfg_factory, tmp_path):
    """VGG-16 and Inception-v3 (random weights) on a tiny local image folder: train on the folder's
    other images, score the held-out ones, re-apply the saved patch to the other architecture."""
    from fragility.benchmarks.runner import run

    root = tmp_path / "folder"
    g = torch.Generator().manual_seed(0)
    for cls in ("banana", "toaster"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    common = ["dataset=imagefolder", f"dataset.root={root}", "n_samples=2", "batch_size=2", "attack.curve_areas=[]"]
    rec = run(
        cfg_factory(
            "model=vgg16",
            "attack=patch",
            "attack.target=toaster",
            "attack.steps=1",
            "attack.batch_size=2",
            f"attack.save={tmp_path / 'vgg.png'}",
            *common,
        )
    )
    assert rec.model == "vgg16@untrained" and rec.attack == "patch"
    patch = Patch(load=str(tmp_path / "vgg.png"))
    assert patch.info["model"] == "vgg16@untrained" and patch.info["train_data"] == "folder" and patch.info["n_train"] == 2
    assert patch.patch.shape == (3, 78, 78)  # its largest side: sqrt(0.1 * 1.2 * 224^2) = 77.6, rounded up
    rec2 = run(cfg_factory("model=inception_v3", "attack=patch", f"attack.load={tmp_path / 'vgg.png'}", *common))
    assert rec2.model == "inception_v3@untrained" and rec2.eps == pytest.approx(0.1)
    # the saved sticker resampled to 10% of Inception's 299x299 input, exactly
    x = torch.rand(2, 3, 299, 299)
    assert ((patch.apply(x) != x).any(1).flatten(1).sum(1) == round(0.1 * 299 * 299)).all()


def test_training_copy_is_fused_and_leaves_the_model_alone():
    from fragility.attacks.patch import frozen_copy
    from fragility.models.cifar_resnet import build

    model = build(8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, 32, 32)
    net = frozen_copy(model, x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # BatchNorm folded
    assert not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        assert torch.allclose(net(x), model.eval()(x), atol=1e-4)
    model.train()
    Patch(target=1, steps=2, batch_size=4).fit(model, x, torch.zeros(4, dtype=torch.long))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
