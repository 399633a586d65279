"""``fragility-style``: cue-conflict sets, shape-vs-texture bias, and the stylization curve.

Modes (``mode=``):

- ``shape_bias`` (default): build the cue-conflict set once (content = ``content`` images, texture =
  an image of another class from its train split or ``texture_path``, stylized with the ``features``
  network; written to ``cue_conflict``), then score ``model`` on it through the runner
  (``attack=shape_bias dataset=npz``): one record in the results store whose ``extra_json`` holds
  ``shape_bias``, ``shape_bias_ci``, ``shape_bias_n``. An existing set is reused when it was built
  with the same settings (``rebuild=true`` replaces it; other settings with the same path are an error).
- ``build``: only build (or check) the set; prints the style-transfer quality check.
- ``curve``: ``attack=stylize`` at each of ``strengths`` on ``content`` (``curve_n`` images), one record
  per strength, then the accuracy-vs-stylization picture of every model in the store.

Examples::

    fragility-style                                           # digits, digits CNN features (no download)
    fragility-style mode=curve
    fragility-style model=cifar_resnet model.checkpoint=PATH/resnet20-12fca82f.th \\
        model@features=cifar_resnet features.depth=32 features.checkpoint=PATH/resnet32-d509ac18.th \\
        dataset@content=cifar10_npz content.path=PATH/test.npz texture_path=PATH/train.npz \\
        cue_conflict=results/style/cue_conflict-cifar10.npz

The same runs from the main CLI: ``fragility attack=shape_bias dataset=npz dataset.path=SET``,
``fragility attack=stylize attack.strength=0.5``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from fragility.attacks.shape_bias import build_cue_conflict, read_meta, save_cue_conflict
from fragility.attacks.style_transfer import FeatureExtractor, check_settings
from fragility.benchmarks.config import safe_instantiate
from fragility.benchmarks.figures import save_figure, style_panel
from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.runner import resolve_device
from fragility.datasets.npz import open_npz
from fragility.errors import ConfigError

log = logging.getLogger(__name__)
TRANSFER_KEYS = ("steps", "lr", "content_weight", "style_weight", "init")


def _allowed(cfg: DictConfig) -> list[str]:
    return list(cfg.get("allowed_targets") or [])


def set_settings(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a cue-conflict set: sources, feature network, transfer settings, n, seed."""
    node = lambda n: OmegaConf.to_container(n, resolve=True) if n is not None else None
    return {
        "content": node(cfg.content),
        "texture_path": cfg.texture_path,
        "texture_n": cfg.texture_n,
        "features": node(cfg.features),
        "content_layer": cfg.content_layer,
        "style_layers": list(cfg.style_layers) if cfg.style_layers else None,
        "transfer": {k: cfg[k] for k in TRANSFER_KEYS},
        "n": int(cfg.n_samples),
        "seed": int(cfg.seed),
    }


def _sources(cfg: DictConfig):
    """The feature network, the content images and the texture pool the settings name."""
    device = resolve_device(cfg.device)
    features = safe_instantiate(cfg.features, _allowed(cfg)).to(device).eval()
    source = safe_instantiate(cfg.content, _allowed(cfg))
    content = source.load(int(cfg.n_samples), int(cfg.seed), features.input_size)
    tex_source = source.train_split(cfg.texture_path) or source
    textures = tex_source.load(cfg.texture_n, int(cfg.seed) + 1, features.input_size)
    return device, features, content, textures


def _set_picture(path: Path, content, textures, x, y_shape, y_texture, texture_id, features_name: str, k: int = 10) -> Path:
    k = min(k, len(x))
    return style_panel(
        content.images(slice(0, k)),
        textures.images(_positions(textures, texture_id[:k])),
        x[:k].float() / 255,
        content.class_names,
        y_shape[:k],
        y_texture[:k],
        path.with_suffix(".png"),
        title=f"cue-conflict images ({features_name} features)",
    )


def build_set(cfg: DictConfig) -> Path:
    """Build the cue-conflict npz (or reuse one made with the same settings); print the quality check."""
    path = Path(cfg.cue_conflict)
    settings = set_settings(cfg)
    if path.is_file() and not cfg.rebuild:
        meta = read_meta(path)
        if meta.get("settings") != json.loads(json.dumps(settings, default=str)):
            raise ConfigError(f"{path} was built with other settings; give another cue_conflict= path or rebuild=true")
        print(
            f"[fragility-style] reusing {path} ({meta.get('n')} images, built in {meta.get('seconds_per_image', 0):.3f} s/image)"
        )
        if not path.with_suffix(".png").is_file():  # the picture is drawn from the sources and the stored set
            _, _, content, textures = _sources(cfg)
            with open_npz(path) as f:
                x = torch.from_numpy(f["x"]).permute(0, 3, 1, 2)
                ys, yt, tid = (torch.from_numpy(f[k]) for k in ("y", "y_texture", "texture_id"))
            _set_picture(path, content, textures, x, ys, yt, tid, str(meta.get("feature_network")))
        return path
    check_settings(**{k: cfg[k] for k in TRANSFER_KEYS})  # before any loading or progress bar
    device, features, content, textures = _sources(cfg)
    extractor = FeatureExtractor(features, cfg.content_layer, list(cfg.style_layers) if cfg.style_layers else None)
    bar = tqdm(total=len(content), desc=f"cue-conflict ({extractor.name})", unit="img", disable=not cfg.progress, leave=False)
    cc = build_cue_conflict(
        extractor,
        content,
        textures,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        progress=bar.update,
        **{k: cfg[k] for k in TRANSFER_KEYS},
    )
    bar.close()
    q = quality(cc)
    meta = {
        "settings": settings,
        "n": len(cc),
        "feature_network": extractor.name,
        "content_layer": extractor.content_layer,
        "style_layers": list(extractor.style_layers),
        "content_source": content.name,
        "texture_source": textures.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(cc.seconds, 3),
        "seconds_per_image": cc.seconds / len(cc),
        "cpu_seconds_per_image": cc.cpu_seconds / len(cc),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "quality": q,
    }
    save_cue_conflict(path, cc, list(content.class_names), meta)
    panel = _set_picture(path, content, textures, cc.x, cc.y_shape, cc.y_texture, cc.texture_id, extractor.name)
    print(
        f"[fragility-style] wrote {path}: {len(cc)} cue-conflict images ({extractor.name} features, {cc.seconds / len(cc):.3f} s/image, {cc.cpu_seconds / len(cc):.3f} CPU s/image)"
    )
    print("[fragility-style] quality: " + "  ".join(f"{k} {v:.3g}" for k, v in q.items()))
    print(f"[fragility-style] picture: {panel}")
    return path


def _positions(data, ids: torch.Tensor) -> torch.Tensor:
    """Positions in ``data`` of the images with source indices ``ids``."""
    where = {int(i): p for p, i in enumerate(data.ids.tolist())}
    return torch.tensor([where[int(i)] for i in ids], dtype=torch.long)


def quality(cc) -> dict[str, float]:
    """The style-transfer quality check: how far the style loss fell from the content image's own,
    and how much content was lost (relative content loss, see attacks/style_transfer.py)."""
    ratio = cc.start_style_loss / cc.style_loss.clamp_min(1e-12)
    return {
        "median_style_reduction": float(ratio.median()),
        "share_style_reduction_ge_10x": float((ratio >= 10).float().mean()),
        "median_start_style_loss": float(cc.start_style_loss.median()),
        "median_style_loss": float(cc.style_loss.median()),
        "median_content_loss": float(cc.content_loss.median()),
        "p90_content_loss": float(cc.content_loss.quantile(0.9)),
    }


# ---- scoring through the runner ----------------------------------------------------------------
def runner_config(cfg: DictConfig, overrides: list[str], **nodes: Any) -> DictConfig:
    """The main app's config for ``overrides`` with this app's model, logger and top-level keys."""
    from hydra import compose

    run_cfg = compose(config_name="config", overrides=overrides)
    with open_dict(run_cfg):
        run_cfg.model = cfg.model
        run_cfg.logger = cfg.logger
        for key in ("seed", "batch_size", "device", "results_dir", "force", "progress", "allowed_targets"):
            run_cfg[key] = cfg[key]
        run_cfg.results_db = cfg.get("results_db")  # +results_db=URL: the runs and the curve use that store
        for key, value in nodes.items():
            OmegaConf.update(run_cfg, key, value, merge=False, force_add=True)
    return run_cfg


def score_shape_bias(cfg: DictConfig, path: Path) -> RunRecord:
    from fragility.benchmarks.runner import run

    n = int(read_meta(path).get("n") or cfg.n_samples)
    run_cfg = runner_config(cfg, ["dataset=npz", f"dataset.path={path.resolve()}", "attack=shape_bias"], n_samples=n)
    rec = run(run_cfg)
    extra = json.loads(rec.extra_json)
    lo, hi = extra.get("shape_bias_ci", [math.nan, math.nan])
    print(
        f"[fragility-style] {rec.model}: shape bias {extra.get('shape_bias', math.nan):.1%} [{lo:.1%}, {hi:.1%}] over "
        f"{extra.get('shape_bias_n')} shape-or-texture decisions of {extra.get('cue_conflict_images')} cue-conflict images"
    )
    return rec


def run_curve(cfg: DictConfig) -> list[RunRecord]:
    from fragility.benchmarks.runner import run

    records = []
    for s in cfg.strengths:
        over = ["attack=stylize", f"attack.strength={s}"] + [f"attack.{k}={cfg[k]}" for k in TRANSFER_KEYS]
        nodes = {
            "dataset": cfg.content,
            "attack.features": cfg.features,
            "n_samples": int(cfg.curve_n),
            "attack.texture_n": cfg.texture_n,
            "attack.content_layer": cfg.content_layer,
            "attack.style_layers": cfg.style_layers,
        }
        if cfg.texture_path:
            nodes["attack.textures"] = cfg.texture_path
        records.append(run(runner_config(cfg, over, **nodes)))
    from fragility.benchmarks.store import ResultStore

    path = curve_figure(ResultStore.for_config(cfg).records(), Path(cfg.results_dir) / "style" / "stylization_curve.png")
    print(f"[fragility-style] curve: {path}")
    return records


def curve_figure(records: list[RunRecord], path: str | Path, title: str = "accuracy under stylization") -> Path:
    """Robust accuracy against stylization strength, one line per model, dataset and feature network."""
    lines: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in records:
        if r.attack != "stylize":
            continue
        feats = next((p.split("=", 1)[1] for p in r.params.split() if p.startswith("features=")), "?")
        lines.setdefault((r.model, r.dataset, feats), []).append((r.eps, r.robust_acc))
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for (model, dataset, feats), pts in sorted(lines.items()):
        pts = sorted(dict(pts).items())
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{model} ({dataset}, {feats} features)")
    ax.set_xlabel("stylization strength (0: original, 1: full style transfer)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def style(cfg: DictConfig) -> None:
    """The app's body: build / score / curve as ``mode`` says."""
    logging.getLogger("fragility").setLevel(logging.INFO)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    mode = str(cfg.mode)
    if mode not in ("shape_bias", "build", "curve"):
        raise ConfigError(f"unknown mode {mode!r} (shape_bias, build, curve)")
    if mode == "curve":
        run_curve(cfg)
        return
    path = build_set(cfg)
    if mode == "shape_bias":
        score_shape_bias(cfg, path)


def main() -> None:
    from fragility.benchmarks.apps import console_app

    console_app("style", "fragility-style", style)
