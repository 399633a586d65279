"""Shape-vs-texture bias with Geirhos's cue-conflict protocol (Geirhos et al., ICLR 2019).

A cue-conflict image has the shape (content) of class A and the texture (style) of class B != A,
made by style transfer (:mod:`fragility.attacks.style_transfer`) at full strength. A model's
*shape bias* is the share of its decisions that go to A among the decisions that go to A or B;
decisions for any other class are counted but left out, as in the paper. The interval is Wilson's
(``fragility.stats.wilson_interval``) over those A-or-B decisions.

The set is written once (:func:`save_cue_conflict`: an npz with ``x`` uint8 NHWC, ``y`` = shape
label, ``y_texture`` = texture label, the source indices of both images and the settings that made
it), so every model is scored on the same images and ``dataset=npz`` can read it back. Scoring
goes through the runner like any attack (``attack=shape_bias dataset=npz dataset.path=SET``):
:class:`ShapeBias` sees every cue-conflict image in :meth:`ShapeBias.prepare` (the runner only
hands ``_run`` the images already classified by their shape) and reports, in the record's
``extra_json``: ``shape_bias``, ``shape_bias_ci`` ([low, high]), ``shape_bias_n`` (the number of
A-or-B decisions), ``shape_decisions``, ``texture_decisions``, ``other_decisions``,
``cue_conflict_images``. The row's clean accuracy is the share of images classified by shape.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fragility.attacks.base import Attack
from fragility.attacks.style_transfer import FeatureExtractor, pick_textures, style_transfer
from fragility.datasets.npz import open_npz
from fragility.errors import ConfigError, DataError
from fragility.models import eval_mode, predict
from fragility.rng import SampleRNG, mix64
from fragility.stats import wilson_interval

FORMAT = "fragility-cue-conflict/1"


def shape_bias(pred, y_shape, y_texture) -> dict[str, Any]:
    """Shape bias of predictions ``pred`` on cue-conflict images: A-decisions / (A + B decisions),
    with a Wilson 95% interval over the A-or-B decisions. Images whose two labels agree are skipped."""
    pred, ys, yt = (torch.as_tensor(v).long().reshape(-1) for v in (pred, y_shape, y_texture))
    conflict = ys != yt
    k_shape = int(((pred == ys) & conflict).sum())
    k_texture = int(((pred == yt) & conflict).sum())
    n = k_shape + k_texture
    lo, hi = wilson_interval(k_shape, n)
    return {
        "shape_bias": k_shape / n if n else math.nan,
        "shape_bias_ci": [lo, hi],
        "shape_bias_n": n,
        "shape_decisions": k_shape,
        "texture_decisions": k_texture,
        "other_decisions": int(conflict.sum()) - n,
        "cue_conflict_images": int(conflict.sum()),
    }


@dataclass
class CueConflictSet:
    x: torch.Tensor  # (N, C, H, W) uint8: what every model is scored on
    y_shape: torch.Tensor
    y_texture: torch.Tensor
    content_id: torch.Tensor  # index of the content image in its source
    texture_id: torch.Tensor  # index of the texture image in its source
    content_loss: torch.Tensor  # per image (relative, see style_transfer)
    style_loss: torch.Tensor  # per image, against the texture image's Grams
    start_style_loss: torch.Tensor  # the content image's own style loss against the texture
    seconds: float  # wall clock
    cpu_seconds: float = math.nan  # CPU time of this process (all its threads): less sensitive to a busy machine
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y_shape)


def build_cue_conflict(
    extractor: FeatureExtractor,
    content,
    textures,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress=None,
    **transfer: Any,
) -> CueConflictSet:
    """Stylize every image of ``content`` (an ImageSet) with an image of another class drawn from
    ``textures`` (an ImageSet) at full strength. ``transfer``: keyword arguments of
    :func:`~fragility.attacks.style_transfer.style_transfer` (steps, lr, weights, init). Each
    content image's texture and noise come from a stream keyed by its source index and ``seed``."""
    if len(content) == 0:
        raise DataError("no content images for the cue-conflict set")
    dev = next((p.device for p in extractor.model.parameters()), torch.device("cpu"))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "ti", "lc", "ls", "l0")}
    t0, c0 = time.perf_counter(), time.process_time()
    with eval_mode(extractor.model):
        for i in range(0, len(content), batch_size):
            sl = slice(i, i + batch_size)
            x, y = content.images(sl).to(dev), content.y[sl]
            rng = SampleRNG(mix64(content.ids[sl] + (int(seed) << 32)).to(dev))
            idx = pick_textures(y, textures.y, rng.uniform(1)[:, 0].cpu())
            tex = textures.images(idx).to(dev)
            out = style_transfer(extractor, x, tex, strength=1.0, rng=rng, **transfer)
            parts["x"].append(torch.round(out.images.cpu() * 255).to(torch.uint8))
            parts["ti"].append(idx.cpu())
            parts["lc"].append(out.content_loss.cpu())
            parts["ls"].append(out.style_loss.cpu())
            parts["l0"].append(out.start_style_loss.cpu())
            if progress is not None:
                progress(len(y))
    ti = torch.cat(parts["ti"])
    return CueConflictSet(
        x=torch.cat(parts["x"]),
        y_shape=content.y.clone(),
        y_texture=textures.y[ti].clone(),
        content_id=content.ids.clone(),
        texture_id=textures.ids[ti].clone(),
        content_loss=torch.cat(parts["lc"]),
        style_loss=torch.cat(parts["ls"]),
        start_style_loss=torch.cat(parts["l0"]),
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )


def save_cue_conflict(path: str | Path, cc: CueConflictSet, class_names: list[str], meta: dict[str, Any]) -> Path:
    """Write the set as an npz that ``dataset=npz`` reads (``x`` uint8 NHWC, ``y`` = shape label) with
    ``y_texture``, the source indices, the per-image losses, class names and ``meta`` (JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **meta}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        x=cc.x.permute(0, 2, 3, 1).numpy(),
        y=cc.y_shape.numpy(),
        y_texture=cc.y_texture.numpy(),
        content_id=cc.content_id.numpy(),
        texture_id=cc.texture_id.numpy(),
        content_loss=cc.content_loss.numpy(),
        style_loss=cc.style_loss.numpy(),
        start_style_loss=cc.start_style_loss.numpy(),
        class_names=np.array(class_names, dtype=str),
        meta=np.array(json.dumps(meta, default=str)),
    )
    tmp.replace(path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The settings a cue-conflict npz was built with (empty for another kind of npz)."""
    with open_npz(path) as f:
        return json.loads(str(f["meta"])) if "meta" in f else {}


def read_texture_labels(path: str | Path, key: str = "y_texture") -> np.ndarray:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"cue-conflict set not found: {path}")
    with open_npz(path) as f:
        if key not in f:
            raise DataError(f"{path} has no {key!r} array: not a cue-conflict set (build one with fragility-style)")
        return f[key]


class ShapeBias(Attack):
    """Score shape bias on a cue-conflict npz (``dataset=npz dataset.path=SET``). The images are the
    test: nothing is optimised, ``_run`` returns them as they are."""

    name = "shape_bias"
    norm = None
    needs_gradients = False
    trains = True  # the runner calls prepare() with every evaluated image (held_out)
    #: extra_metrics does not need a result: a model that never decides by shape attacks nothing,
    #: and its shape bias (0) must still reach the record (the runner has to honour this flag)
    metrics_without_result = True

    def __init__(self, *, cue_conflict: str | None = None, texture_key: str = "y_texture", seed: int = 0) -> None:
        super().__init__(target=None, seed=seed)
        self.cue_conflict = str(cue_conflict) if cue_conflict else None  # checked when used (prepare)
        self.texture_key = str(texture_key)
        self.train_n = 1  # the runner's training-data hook loads this many; shape bias needs none
        self._stats: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"set": Path(self.cue_conflict).stem if self.cue_conflict else "none"}

    def prepare(self, model, *, train, held_out, device, progress: bool = False) -> None:
        """Predict every cue-conflict image (``held_out``: the images the runner scores) and count."""
        if not self.cue_conflict:
            raise ConfigError(
                "shape_bias needs the cue-conflict npz: dataset=npz dataset.path=SET (attack.cue_conflict follows it)"
            )
        y_texture = torch.from_numpy(read_texture_labels(self.cue_conflict, self.texture_key).astype(np.int64))
        if int(held_out.ids.max()) >= len(y_texture):
            raise DataError(f"{self.cue_conflict}: {len(y_texture)} texture labels, fewer than its images")
        pred, _ = predict(model, held_out, device=device)
        self._stats = shape_bias(pred, held_out.y, y_texture[held_out.ids])

    def score(self, model, images: torch.Tensor, y_shape, y_texture, batch_size: int = 256) -> dict[str, Any]:
        """Shape bias of ``model`` on cue-conflict images, from Python (no runner)."""
        pred, _ = predict(model, images, batch_size)
        self._stats = shape_bias(pred, y_shape, y_texture)
        return dict(self._stats)

    def _run(self, model, images, labels, targets, rng):
        return images.clone()

    def extra_metrics(self, result=None) -> dict[str, Any]:
        return dict(self._stats)
