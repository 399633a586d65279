"""Attribution maps (Captum) and the explain=true panels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fragility.benchmarks.explain import METHODS, attribution_map, cam_overlap, explain, last_conv
from fragility.errors import ConfigError
from fragility.models.wrapper import Classifier


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # two cores shared by several jobs: more threads than cores makes these small models crawl
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RegionNet(nn.Module):
    """Sees only the rows ``r0:r1`` and columns ``c0:c1`` of the image: its decision depends on
    that region alone. Positive weights so class 0's evidence is the region's brightness."""

    def __init__(self, region=(2, 6, 10, 14)) -> None:
        super().__init__()
        self.region = region
        mask = torch.zeros(1, 1, 16, 16)
        r0, r1, c0, c1 = region
        mask[..., r0:r1, c0:c1] = 1
        self.register_buffer("mask", mask)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv1.weight.copy_(torch.rand(self.conv1.weight.shape, generator=g) * 0.3)
            self.conv2.weight.copy_(torch.rand(self.conv2.weight.shape, generator=g) * 0.3)
            self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4, [0.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x * self.mask))))
        return self.fc(h.mean((2, 3)))


def region_model() -> Classifier:
    return Classifier(
        RegionNet(), mean=[0.0] * 3, std=[1.0] * 3, input_size=(3, 16, 16), class_names=["a", "b", "c"], name="region"
    )


def test_maps_have_the_input_spatial_size(tiny_model, tiny_batch):
    x, _ = tiny_batch
    maps, pred, conf = explain(tiny_model, x[:3], smooth_samples=4, ig_steps=8)
    assert set(maps) == set(METHODS)
    for m, a in maps.items():
        assert a.shape == (3, 8, 8), m
        assert (a >= 0).all() and torch.isfinite(a).all()
    assert pred.shape == (3,) and ((conf > 0) & (conf <= 1)).all()
    with pytest.raises(ConfigError):
        attribution_map(tiny_model, x[:1], pred[:1], "lime")


def test_gradcam_highlights_the_only_region_that_matters():
    model = region_model()
    assert last_conv(model) is model.net.conv2
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    target = torch.zeros(4, dtype=torch.long)
    r0, r1, c0, c1 = model.net.region
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[r0:r1, c0:c1] = True
    near = torch.zeros(16, 16, dtype=torch.bool)  # the region plus the two convolutions' reach
    near[max(r0 - 2, 0) : r1 + 2, max(c0 - 2, 0) : c1 + 2] = True
    cam = attribution_map(model, x, target, "gradcam")
    assert cam.shape == (4, 16, 16)
    share = (cam * near).flatten(1).sum(1) / cam.flatten(1).sum(1)
    assert (share > 0.95).all(), share
    peak = cam.flatten(1).argmax(1)
    assert near.flatten()[peak].all()
    for method in ("gradient", "smoothgrad", "integrated_gradients"):
        a = attribution_map(model, x, target, method, smooth_samples=4, ig_steps=8)
        assert a[:, ~inside].abs().max() == 0 and a[:, inside].sum() > 0, method  # the mask kills gradients outside


def test_cam_overlap():
    a = torch.zeros(2, 4, 4)
    a[:, :2] = 1
    b = a.clone()
    b[1] = 0
    b[1, 2:] = 1
    assert torch.allclose(cam_overlap(a, b), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_explain_panels_written_and_linked(cfg_factory, attack):
    from fragility.benchmarks.runner import run

    rec = run(cfg_factory(f"attack={attack}", "n_samples=12", "explain=true"))
    figs = json.loads(rec.extra_json)["figures"]
    names = {Path(f).name for f in figs}
    assert {"explain_saliency.png", "explain_gradcam.png"} <= names
    results = Path(json.loads(rec.config_json)["results_dir"])
    for f in figs:
        p = results / f
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (results / "leaderboard.html").read_text()
    assert "explain_gradcam" in html


def test_explain_skips_non_differentiable_models(tmp_path):
    from types import SimpleNamespace

    from fragility.benchmarks.explain import explain_figures

    model = region_model()
    model.differentiable = False
    ctx = SimpleNamespace(
        model=model,
        examples={"clean": torch.rand(2, 3, 16, 16), "adv": torch.rand(2, 3, 16, 16)},
        device=torch.device("cpu"),
        run_dir=tmp_path,
    )
    assert explain_figures(ctx, SimpleNamespace(name="x", describe=lambda: "")) == {}


def test_explain_on_a_torchscript_model_draws_saliency_only(tmp_path, digits_model):
    """A TorchScript model has no nn.Conv2d for Grad-CAM to hook: the run used to stop with exit 2
    after its attack, its result lost; now the saliency panel is drawn and the Grad-CAM one skipped."""
    from types import SimpleNamespace

    from fragility.benchmarks.explain import explain_figures
    from fragility.models.wrapper import Classifier

    scripted = torch.jit.trace(digits_model.net.eval(), torch.rand(2, 1, 8, 8))
    model = Classifier(scripted, mean=(0.31,), std=(0.38,), input_size=(1, 8, 8), class_names=digits_model.class_names, name="ts")
    x = torch.rand(3, 1, 8, 8)
    ctx = SimpleNamespace(model=model, examples={"clean": x, "adv": x.flip(-1)}, device=torch.device("cpu"), run_dir=tmp_path)
    figs = explain_figures(ctx, SimpleNamespace(name="fgsm", describe=lambda: "eps=0.3"))
    assert set(figs) == {"explain_saliency"} and (tmp_path / "explain_saliency.png").is_file()


def test_explain_through_a_non_differentiable_defense(tmp_path):
    """Bit-depth reduction passes no gradient; explain uses the BPDA surrogate and restores the flag."""
    from types import SimpleNamespace

    from fragility.benchmarks.explain import explain_figures
    from fragility.defenses.bit_depth import BitDepth

    model = BitDepth(bits=3).wrap(region_model())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = attribution_map(model, x, torch.zeros(2, dtype=torch.long), "gradient")
    assert plain.abs().max() == 0  # what a naive saliency map of a defended model shows
    ctx = SimpleNamespace(model=model, examples={"clean": x, "adv": x.flip(-1)}, device=torch.device("cpu"), run_dir=tmp_path)
    figs = explain_figures(ctx, SimpleNamespace(name="x", describe=lambda: ""))
    assert set(figs) == {"explain_saliency", "explain_gradcam"} and all(p.is_file() for p in figs.values())
    assert model.adaptive is False
    model.adaptive = True
    assert attribution_map(model, x, torch.zeros(2, dtype=torch.long), "gradient").abs().max() > 0
