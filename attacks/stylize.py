"""Stylization robustness: does the prediction survive when an image's textures are replaced?

Each image keeps its content and takes the style (textures) of another image by neural style
transfer (Gatys et al. 2016, :mod:`fragility.attacks.style_transfer`) at ``strength`` in [0, 1]:
the style statistics the optimisation matches are interpolated in feature space between the
image's own (0: the image is returned exactly) and the texture image's (1: full Gatys transfer).
The threat model is ``norm = "style"`` with budget ``strength``: unbounded in pixels, success
means the prediction changed, as for any untargeted attack. A sweep over strengths gives an
accuracy-vs-stylization curve (Geirhos et al., ICLR 2019, motivate it: ImageNet CNNs decide by
texture where people decide by shape).

Texture sources (``textures=``):

- ``dataset`` (default): images of *other classes* from the same dataset's training split (the
  runner hands them to :meth:`Stylize.prepare`; ``texture_n`` caps how many), or ones given from
  Python with :meth:`Stylize.set_textures`;
- ``batch``: another image of another class from the batch being attacked (no extra data; the
  texture of an image then depends on its batch, the one exception to batch invariance);
- a path: an npz (``x``, optional ``y``) of the same dataset, or a folder of pictures such as
  paintings (any class: unlabeled), resized to the images' size.

Each image's texture is drawn from its own random stream. The feature network is ``features``
(any zoo model: a Hydra model node, or a Classifier from Python), or the attacked model itself when
None (then every optimisation step is a query to it; with another network the attacked model is
only asked once, for the verdict). Per-sample extras: ``texture_label``, ``texture_index``,
``style_loss``, ``content_loss`` (stored with every sample) and ``texture`` (the texture images,
for the content | style | stylized picture).

Example::

    atk = Stylize(strength=1.0, textures="batch", steps=100)
    res = atk(model, images, labels)            # res.success: the prediction changed
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fragility.attacks.base import Attack
from fragility.attacks.style_transfer import INITS, FeatureExtractor, pick_textures, style_transfer
from fragility.budget import parse_budget, parse_number
from fragility.datasets.npz import open_npz
from fragility.errors import ConfigError, DataError
from fragility.models.wrapper import eval_mode

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Stylize(Attack):
    name = "stylize"
    norm = "style"
    sample_extras = ("texture_label", "texture_index", "style_loss", "content_loss")

    def __init__(
        self,
        *,
        strength: float | str = 1.0,
        textures: str = "dataset",
        texture_n: int | None = None,
        features: Any = None,
        content_layer: str | None = None,
        style_layers: list[str] | None = None,
        content_weight: float = 1.0,
        style_weight: float = 30.0,
        steps: int = 200,
        lr: float = 0.02,
        init: str = "content",
        seed: int = 0,
    ) -> None:
        super().__init__(target=None, seed=seed)
        self.strength = parse_budget(strength, "strength")
        if self.strength > 1:
            raise ConfigError(f"strength is an interpolation in [0, 1], got {strength!r}")
        self.textures = str(textures)
        if not self.textures:
            raise ConfigError("textures must be 'dataset', 'batch' or a path")
        self.texture_n = int(texture_n) if texture_n else None
        self.features = features
        if features is not None and not isinstance(features, torch.nn.Module):
            raise ConfigError("features must be a model (a zoo model config node), or null for the attacked model")
        self.content_layer, self.style_layers = content_layer, list(style_layers) if style_layers else None
        self.content_weight, self.style_weight = (
            parse_number(content_weight, "content_weight"),
            parse_number(style_weight, "style_weight"),
        )
        self.steps, self.lr = int(steps), parse_number(lr, "lr")
        if self.steps < 0 or self.lr <= 0 or self.content_weight < 0 or self.style_weight < 0:
            raise ConfigError("steps and weights must be >= 0 and lr > 0")
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r} (valid: {', '.join(INITS)})")
        self.init = init
        # the runner's hook for learning attacks hands us training images: the texture pool
        self.trains = self.textures == "dataset"
        self.train_n, self.train_dataset, self.train_path = self.texture_n, None, None
        self.needs_gradients = features is None
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None  # (images uint8/float NCHW, labels)
        self.pool_name: str | None = None

    @property
    def budget(self) -> float:
        return self.strength

    def params(self) -> dict[str, Any]:
        src = self.textures if self.textures in ("dataset", "batch") else Path(self.textures).name
        feats = getattr(self.features, "name", "self") if self.features is not None else "self"
        return {"strength": f"{self.strength:g}", "textures": src, "features": feats, "steps": self.steps, "init": self.init}

    # ---- texture pool ----------------------------------------------------------------------
    def set_textures(self, images: torch.Tensor, labels: torch.Tensor | None = None, name: str = "given") -> Stylize:
        """Use ``images`` ([0, 1] or uint8 NCHW; ``labels`` -1 or None for unlabeled) as the pool."""
        labels = torch.full((len(images),), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        self._pool, self.pool_name = (images, labels), name
        return self

    def prepare(self, model, *, train, held_out, device, progress: bool = False) -> None:
        """Runner hook: ``train`` (an ImageSet of the dataset's training split) is the texture pool."""
        self.set_textures(train.x, train.y, name=train.name)

    def _load_path(self, size: tuple[int, int, int]) -> None:
        path = Path(self.textures).expanduser()
        if path.is_dir():
            x = load_picture_folder(path, size, self.texture_n, self.seed)
            self.set_textures(x, None, name=path.name)
        elif path.suffix == ".npz" and path.is_file():
            from fragility.datasets import Npz

            data = Npz(str(path)).load(min(self.texture_n or 10**12, _npz_len(path)), self.seed)
            self.set_textures(data.x, data.y, name=path.stem)
        else:
            raise DataError(f"texture source not found: {path} (textures= dataset, batch, an npz file or a folder of pictures)")

    def texture_pool(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.textures == "batch":
            return images, labels
        if self._pool is None and self.textures != "dataset":
            self._load_path(tuple(images.shape[1:]))
        if self._pool is None:
            raise ConfigError(
                "stylize has no texture images: run it through the runner (textures=dataset), call set_textures(), "
                "or give textures=batch or a path"
            )
        x, y = self._pool
        if tuple(x.shape[1:]) != tuple(images.shape[1:]):
            raise DataError(f"texture images are {tuple(x.shape[1:])}, the attacked images {tuple(images.shape[1:])}")
        return x, y

    # ---- the attack ------------------------------------------------------------------------
    def _run(self, model, images, labels, targets, rng):
        pool_x, pool_y = self.texture_pool(images, labels)
        index = pick_textures(labels, pool_y, rng.uniform(1)[:, 0])
        tex = pool_x[index.cpu()].to(images.device)
        tex = tex.float() / 255.0 if tex.dtype == torch.uint8 else tex.float()
        feature_model = model if self.features is None else self.features.to(images.device)
        # the attacked model as feature network: every pass runs to the end, so each is counted as a query
        extractor = FeatureExtractor(feature_model, self.content_layer, self.style_layers, stop_early=self.features is not None)
        with eval_mode(feature_model):
            out = style_transfer(
                extractor,
                images,
                tex,
                strength=self.strength,
                content_weight=self.content_weight,
                style_weight=self.style_weight,
                steps=self.steps,
                lr=self.lr,
                init=self.init,
                rng=rng,
            )
        extras = {
            "texture_label": pool_y[index.cpu()].to(images.device),
            "texture_index": index,
            "style_loss": out.style_loss,
            "content_loss": out.content_loss,
            "start_style_loss": out.start_style_loss,
            "texture": tex,
        }
        return out.images, extras

    def extra_metrics(self, result) -> dict[str, Any]:
        out: dict[str, Any] = {"texture_source": self.pool_name or self.textures, "strength": self.strength}
        e = result.extras if result is not None else {}
        if "style_loss" in e and len(result):
            ratio = e["start_style_loss"] / e["style_loss"].clamp_min(1e-12)
            out.update(
                median_style_loss=float(e["style_loss"].median()),
                median_content_loss=float(e["content_loss"].median()),
                median_style_reduction=float(ratio.median()),
            )
            lab = e["texture_label"]
            known = lab >= 0
            if bool(known.any()):
                out["to_texture_class"] = float((result.pred[known] == lab[known]).float().mean())
        return out


def _npz_len(path: Path) -> int:
    with open_npz(path) as f:
        return len(f["y"]) if "y" in f else len(f["x"])


def load_picture_folder(root: Path, size: tuple[int, int, int], n: int | None, seed: int) -> torch.Tensor:
    """Every picture under ``root`` (recursively), as uint8 NCHW resized to ``size`` (C, H, W);
    a seeded subset of ``n`` when there are more."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    if n is not None and len(files) > n:
        files = [files[i] for i in sorted(np.random.default_rng(seed).permutation(len(files))[:n])]
    c, h, w = size
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                t = TF.pil_to_tensor(im.convert("L" if c == 1 else "RGB"))
        except OSError as e:
            raise DataError(f"cannot read picture {f}: {e}") from None
        out.append(TF.resize(t, [h, w], antialias=True))
    return torch.stack(out)
