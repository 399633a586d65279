"""``attack=stylize`` draws its content | style | stylized picture through the one figure registry
(benchmarks/figures.py ``ATTACK_FIGURES``), like every other attack's picture."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from fragility.benchmarks import figures


def test_stylize_run_on_digits_writes_its_picture(cfg_factory, monkeypatch, tmp_path):
    from fragility.benchmarks.runner import run

    seen = {}
    real = figures.style_panel

    def spy(content, texture, stylized, class_names, y_shape, y_texture, path, title=""):
        seen.update(content=content, texture=texture, stylized=stylized, y_shape=y_shape, y_texture=y_texture)
        return real(content, texture, stylized, class_names, y_shape, y_texture, path, title=title)

    monkeypatch.setattr(figures, "style_panel", spy)
    rec = run(cfg_factory("attack=stylize", "attack.steps=3", "attack.texture_n=100", "n_samples=12"))
    assert rec.attack == "stylize"
    shown = json.loads(rec.extra_json)["figures"]
    assert f"runs/{rec.config_hash}/stylize.png" in shown and f"runs/{rec.config_hash}/examples.png" in shown
    png = tmp_path / "results" / "runs" / rec.config_hash / "stylize.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    # the panel shows the run's examples with the textures the attack drew for them: other classes
    k = len(seen["content"])
    assert 0 < k <= 8 and seen["texture"].shape == seen["content"].shape == seen["stylized"].shape
    assert bool((seen["y_texture"] != seen["y_shape"]).all())
    assert not torch.equal(seen["stylized"], seen["content"])


def test_stylize_figure_needs_the_texture_extras(tmp_path):
    ctx = SimpleNamespace(examples={}, result=None, run_dir=tmp_path)
    assert figures.ATTACK_FIGURES["stylize"](ctx, None) == {}
    ex = {"clean": torch.rand(2, 1, 8, 8), "adv": torch.rand(2, 1, 8, 8), "labels": torch.tensor([0, 1])}
    ctx = SimpleNamespace(examples=ex, result=SimpleNamespace(extras={}), run_dir=tmp_path)
    assert figures.ATTACK_FIGURES["stylize"](ctx, None) == {}
    assert not list(tmp_path.iterdir())
