"""Adversarial patch: one image-independent sticker that turns any image into the target class.

Brown, Mané, Roy, Abadi, Gilmer, "Adversarial Patch", 2017 (arXiv:1712.09665). The patch is trained
with expectation over transformation: each step pastes it into a batch of training images, each at
its own random location, rotation (``±rotation`` degrees) and scale (a multiple of ``area``), and
maximizes the target's log-probability averaged over the batch. Evaluation pastes the trained patch
at exactly ``area`` of each held-out image (random location and rotation from the per-sample
streams), so the threat model is: ``round(area * H * W)`` pixels, anywhere, any value.

A trained patch is an artifact: :meth:`Patch.save` writes a PNG (the printable sticker, 8-bit, as
scored) and a JSON with its target, shape, area, transformation ranges, training model and data
and held-out success; ``Patch(load=PATH)`` re-applies it to any model with no training.

Example::

    patch = Patch(target="truck", area=0.1, steps=500).fit(model, train_images, train_labels)
    res = patch(model, test_images, test_labels)       # res.success: targeted success per image
    patch.save("truck.png"); res2 = Patch(load="truck.png")(other_model, test_images, test_labels)

With the runner (``attack=patch``) training happens in :meth:`prepare` on ``attack.train_dataset``
(default: the evaluated source's train split, or the rest of the source when it has none), and any
training image identical to an evaluated image is dropped first, so scores are held out.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fragility.attacks.base import Attack
from fragility.attacks.patch_transforms import SHAPES, apply_patch, n_pixels, random_placement, shape_mask, side_pixels
from fragility.budget import parse_number
from fragility.errors import CheckpointError, ConfigError, DataError, InputError, first_line
from fragility.rng import content_keys

FORMAT = "fragility-patch/1"
_DEFAULTS = {"area": 0.1, "shape": "square", "rotation": 22.5, "scale": (0.8, 1.2)}


class Patch(Attack):
    name = "patch"
    norm = "patch"
    trains = True  # the runner calls prepare() with training images before scoring

    def __init__(
        self,
        *,
        target: int | str | None = None,
        area: float | str | None = None,
        shape: str | None = None,
        rotation: float | None = None,
        scale: Sequence[float] | None = None,
        steps: int = 500,
        batch_size: int = 64,
        optimizer: str = "adam",
        lr: float = 0.05,
        resolution: int | None = None,
        train_dataset: Any = None,
        train_path: str | None = None,
        train_n: int | None = None,
        load: str | None = None,
        save: str | None = None,
        curve_areas: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        """``area``, ``shape``, ``rotation`` (degrees) and ``scale`` (range of area multipliers during
        training) default to 0.1, square, 22.5 and (0.8, 1.2), or to the saved patch's values with
        ``load=``. ``curve_areas``: areas at which :meth:`figures` scores the patch (success curve)."""
        super().__init__(target=target, seed=seed)
        self.patch: torch.Tensor | None = None  # (C, P, P) in [0, 1], multiples of 1/255
        self.info: dict[str, Any] = {}
        self.load_path = str(load) if load else None
        given = {"area": area, "shape": shape, "rotation": rotation, "scale": scale}
        if self.load_path:
            self.patch, self.info = read_patch(self.load_path)
            for k in given:
                if given[k] is None:
                    given[k] = self.info[k]
            if target is None:
                self.target = self.info["target"]
        for k, v in _DEFAULTS.items():
            if given[k] is None:
                given[k] = v
        self.area = parse_number(given["area"], "area")
        if not 0 < self.area <= 1:
            raise ConfigError(f"area is a fraction of the image in (0, 1], got {given['area']!r}")
        self.shape = str(given["shape"]).lower()
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown patch shape {given['shape']!r} (valid: {', '.join(SHAPES)})")
        self.rotation = parse_number(given["rotation"], "rotation")
        if not 0 <= self.rotation <= 180:
            raise ConfigError(f"rotation is a maximum angle in degrees in [0, 180], got {self.rotation}")
        raw = given["scale"]
        sc = [parse_number(v, "scale") for v in (raw if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw] * 2)]
        if len(sc) != 2 or not 0 < sc[0] <= sc[1] or self.area * sc[1] > 1:
            raise ConfigError(f"scale is a range [lo, hi] with 0 < lo <= hi and area * hi <= 1, got {given['scale']!r}")
        self.scale = (sc[0], sc[1])
        self.steps, self.batch_size = int(steps), int(batch_size)
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
        self.optimizer = str(optimizer).lower()
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"unknown optimizer {optimizer!r} (adam, sgd)")
        self.lr = parse_number(lr, "lr")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {lr}")
        self.resolution = int(resolution) if resolution else None
        self.train_dataset, self.train_path = train_dataset, train_path
        self.train_n = int(train_n) if train_n else None
        self.save_path = str(save) if save else None
        self.curve_areas = [parse_number(a, "curve_areas") for a in (curve_areas or [])]
        if any(not 0 < a <= 1 for a in self.curve_areas):
            raise ConfigError(f"curve_areas must lie in (0, 1], got {list(curve_areas or [])}")
        self.history: list[float] = []  # training loss per step
        self._summary: dict[str, Any] = {}

    # ---- threat model ----------------------------------------------------------------------
    @property
    def budget(self) -> float:
        return self.area

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "area": self.area, "shape": self.shape, "rotation": self.rotation}
        if self.load_path:
            out["load"] = Path(self.load_path).name
        else:
            out.update(steps=self.steps, batch=self.batch_size)
        return out

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        # the patch covers exactly n_pixels(area) positions; anything beyond that would be a bug here
        h, w = images.shape[-2:]
        changed = (adv != images).any(1).flatten(1).sum(1)
        if (changed > int(n_pixels(self.area, h, w))).any():
            raise RuntimeError("patch changed more pixels than its area allows")
        return adv

    # ---- training --------------------------------------------------------------------------
    def fit(
        self,
        model: torch.nn.Module,
        images: Any,
        labels: torch.Tensor | None = None,
        *,
        progress: bool = False,
        device: torch.device | str | None = None,
        init: torch.Tensor | None = None,
    ) -> Patch:
        """Train the patch on ``images`` (a float [0, 1] NCHW tensor, or an ``ImageSet`` whose uint8
        images are converted per batch) with EOT; images of the target class are skipped. ``init``:
        a (C, P, P) patch to start from (e.g. a saved one, to fine-tune it for another area or model),
        resampled to this patch's resolution; default uniform noise."""
        from tqdm.auto import tqdm

        from fragility.datasets import ImageSet

        if self.target is None:
            raise ConfigError("the adversarial patch is targeted: set attack.target (a class index or name)")
        data = images if isinstance(images, ImageSet) else None
        x = data.x if data is not None else images
        y = torch.as_tensor(data.y if data is not None else labels, dtype=torch.long)
        if not torch.is_tensor(x) or x.dim() != 4 or len(x) != len(y):
            raise InputError("fit needs an NCHW image tensor (or ImageSet) and one label per image")
        if hasattr(model, "check_images"):
            model.check_images(x[:1].float())
        tgt = model.class_index(self.target) if hasattr(model, "class_index") else int(self.target)
        keep = (y != tgt).nonzero().flatten()
        if len(keep) == 0:
            raise DataError("no training images outside the target class")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        c, h, w = x.shape[1:]
        res = self.resolution or max(8, math.ceil(float(side_pixels(self.area, h, w, self.shape, torch.tensor(self.scale[1])))))
        g = torch.Generator().manual_seed(self.seed)
        patch = torch.rand(c, res, res, generator=g)
        if init is not None:
            if init.dim() != 3 or init.shape[0] != c:
                raise InputError(f"init must be a ({c}, P, P) patch, got shape {tuple(init.shape)}")
            patch = F.interpolate(init[None].float(), size=(res, res), mode="bilinear", antialias=True, align_corners=False)[
                0
            ].clamp(0, 1)
        patch = patch.to(device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr) if self.optimizer == "adam" else torch.optim.SGD([patch], lr=self.lr)
        target = torch.full((self.batch_size,), tgt, dtype=torch.long, device=device)
        self.history = []
        t0 = time.perf_counter()
        net = frozen_copy(model, x[:2].to(device))
        cl = torch.channels_last
        bar = tqdm(range(self.steps), desc=f"patch -> {self.target}", disable=not progress, leave=False)
        for _ in bar:
            idx = keep[torch.randint(len(keep), (self.batch_size,), generator=g)]
            xb = x[idx].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            pl = random_placement(
                self.batch_size,
                h,
                w,
                self.area,
                self.shape,
                self.rotation,
                self.scale,
                lambda k: torch.rand(self.batch_size, k, generator=g),
                device,
            )
            adv = apply_patch(xb, patch, pl, self.area, self.shape)
            loss = F.cross_entropy(net(adv.contiguous(memory_format=cl) if c == 3 else adv), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
            self.history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{self.history[-1]:.3f}", refresh=False)
        seconds = time.perf_counter() - t0
        self.patch = quantize(patch.detach().cpu())  # what is scored is what prints: 8-bit
        self.info = {
            "target": model.class_names[tgt] if hasattr(model, "class_names") else tgt,
            "target_index": tgt,
            "model": getattr(model, "name", type(model).__name__),
            "train_data": data.name if data is not None else "tensor",
            "n_train": len(keep),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "seed": self.seed,
            "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(1, self.steps), 5),
            "final_loss": self.history[-1] if self.history else None,
        }
        return self

    def prepare(self, model, *, train, held_out, device, progress: bool = False) -> None:
        """Runner hook (``trains = True``): train on ``train`` (an ImageSet the runner loaded: the
        source's train split, ``train_dataset`` or the source itself), with every image identical
        to one in ``held_out`` (the images about to be scored) dropped first; a loaded patch is
        re-applied as is (fine-tune from Python with :meth:`fit`)."""
        self._summary = {"eval_data": held_out.name}
        if self.patch is not None:
            self._summary.update(
                source="loaded",
                patch_file=self.load_path,
                trained_on=self.info.get("train_data"),
                trained_model=self.info.get("model"),
            )
            return
        train, dropped = drop_overlap(train, held_out)
        self.fit(model, train, progress=progress, device=device)
        self._summary.update(
            source="trained",
            trained_on=train.name,
            n_train=self.info["n_train"],
            dropped_overlap=dropped,
            train_seconds=self.info["train_seconds"],
            seconds_per_step=self.info["seconds_per_step"],
        )

    # ---- evaluation ------------------------------------------------------------------------
    def _run(self, model, images, labels, targets, rng):
        if self.patch is None:
            raise ConfigError("the patch is not trained: call fit(), run through the runner, or pass load=PATH")
        if self.patch.shape[0] != images.shape[1]:
            raise InputError(f"the patch has {self.patch.shape[0]} channels, the images {images.shape[1]}")
        n, _, h, w = images.shape
        pl = random_placement(n, h, w, self.area, self.shape, self.rotation, (1.0, 1.0), rng.uniform, images.device)
        adv = apply_patch(images, self.patch.to(images.device), pl, self.area, self.shape)
        return adv, {"labels": labels, "angle": torch.rad2deg(pl.angle), "cx": pl.cx, "cy": pl.cy}

    def apply(self, images: torch.Tensor, *, area: float | None = None, seed: int | None = None) -> torch.Tensor:
        """Paste the patch into ``images`` at ``area`` (default: the patch's), each image at the random
        placement ``__call__`` gives it when called without ``keys``. No model needed."""
        from fragility.rng import SampleRNG

        if self.patch is None:
            raise ConfigError("the patch is not trained: call fit() or pass load=PATH")
        a = self.area if area is None else float(area)
        rng = SampleRNG(content_keys(images, self.seed if seed is None else seed))
        n, _, h, w = images.shape
        pl = random_placement(n, h, w, a, self.shape, self.rotation, (1.0, 1.0), rng.uniform, images.device)
        return apply_patch(images, self.patch.to(images.device), pl, a, self.shape).clamp(0, 1)

    def extra_metrics(self, result) -> dict[str, Any]:
        from fragility.stats import wilson_interval

        labels = result.extras["labels"]
        scored = labels != result.targets
        k_t, k_u, m = int(result.success[scored].sum()), int((result.pred != labels)[scored].sum()), int(scored.sum())
        source = "loaded" if self._summary.get("source") == "loaded" else "heldout"
        out = {
            "split": f"{self._summary.get('eval_data', 'eval')}:{source}",
            "targeted_success": k_t / m if m else math.nan,
            "targeted_ci": list(wilson_interval(k_t, m)),
            "untargeted_success": k_u / m if m else math.nan,
            "untargeted_ci": list(wilson_interval(k_u, m)),
            "n_scored": m,
            **self._summary,
        }
        self.info["heldout"] = {k: out[k] for k in ("split", "targeted_success", "targeted_ci", "untargeted_success", "n_scored")}
        return out

    # ---- artifacts -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.png, the sticker; a circle gets a transparent outside) and the JSON beside it."""
        if self.patch is None:
            raise ConfigError("nothing to save: the patch is not trained")
        from PIL import Image

        png = Path(path).expanduser().with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        arr = (self.patch.clamp(0, 1) * 255).round().to(torch.uint8)
        if self.shape == "circle":
            alpha = (shape_mask(arr.shape[-1], "circle") * 255).to(torch.uint8)[None]
            arr = torch.cat([arr, alpha])
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[0]]
        Image.fromarray(
            arr.permute(1, 2, 0).squeeze(-1).numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy(), mode
        ).save(png)
        meta = {
            "format": FORMAT,
            **self.info,
            "target": self.info.get("target", self.target),
            "shape": self.shape,
            "area": self.area,
            "rotation": self.rotation,
            "scale": list(self.scale),
            "channels": int(self.patch.shape[0]),
            "resolution": int(self.patch.shape[-1]),
            "png": png.name,
        }
        png.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
        return png


def frozen_copy(model: torch.nn.Module, probe: torch.Tensor) -> torch.nn.Module:
    """An eval-mode copy of ``model`` for patch training, with no weight gradients, BatchNorm folded
    into the convolutions (torch.fx) and channels-last weights. The patch never changes the model,
    so this is exact up to float rounding (checked on ``probe``) and buys about 1.5x per step on CPU
    (no weight gradients, no BatchNorm passes); a model fx cannot trace is used unfused."""
    import copy

    from torch.fx.experimental.optimization import fuse

    def plain() -> torch.nn.Module:
        return copy.deepcopy(model).eval().requires_grad_(False)

    net = plain()
    try:
        with torch.no_grad():
            probe = probe.float().div(255) if probe.dtype == torch.uint8 else probe.float()
            ref = net(probe)
            if isinstance(getattr(net, "net", None), torch.nn.Module):
                net.net = fuse(net.net, inplace=True)
            else:
                net = fuse(net, inplace=True)
            out = net(probe)
        if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max().clamp_min(1))):
            net = plain()
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, AttributeError, NotImplementedError, KeyError):
        net = plain()  # not traceable: the unfused copy
    return net.to(memory_format=torch.channels_last)


def quantize(patch: torch.Tensor) -> torch.Tensor:
    return (patch.clamp(0, 1) * 255).round() / 255


def drop_overlap(train, held_out) -> tuple[Any, int]:
    """Remove from ``train`` (an ImageSet) every image whose 8-bit content equals one in ``held_out``."""

    def keys(d) -> torch.Tensor:  # in chunks: a whole ImageNet-sized set as int64 would not fit in memory
        return torch.cat([content_keys(d.images(slice(i, i + 512)), 0) for i in range(0, len(d), 512)])

    held = set(keys(held_out).tolist())
    tk = keys(train)
    keep = torch.tensor([k not in held for k in tk.tolist()], dtype=torch.bool)
    dropped = int((~keep).sum())
    if dropped:
        train.x, train.y, train.ids = train.x[keep], train.y[keep], train.ids[keep]
    if len(train) == 0:
        raise DataError(f"no training images left in {train.name} after removing the evaluated ones")
    return train, dropped


_REQUIRED = {"target": (str, int), "shape": str, "area": (int, float), "rotation": (int, float), "scale": list}


def read_patch(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load a saved patch (``.png`` or ``.json``; the other file is found beside it), validated."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    png, meta_path = p.with_suffix(".png"), p.with_suffix(".json")
    for f in (png, meta_path):
        if not f.is_file():
            raise CheckpointError(f"patch file not found: {f} (a saved patch is a .png plus a .json beside it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt patch metadata {meta_path}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a fragility patch file (format {FORMAT!r} expected)")
    for k, t in _REQUIRED.items():
        if not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool):
            raise CheckpointError(f"{meta_path}: field {k!r} missing or of the wrong type")
    if meta["shape"] not in SHAPES or len(meta["scale"]) != 2:
        raise CheckpointError(f"{meta_path}: bad shape {meta['shape']!r} or scale {meta['scale']!r}")
    try:
        with Image.open(png) as im:
            im.load()
            arr = np.asarray(im.convert({"L": "L", "LA": "LA", "RGBA": "RGBA"}.get(im.mode, "RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CheckpointError(f"corrupt patch image {png}: {first_line(e)}") from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    if t.shape[0] in (2, 4):
        t = t[:-1]  # alpha only marks the circle's outside
    if t.shape[-1] != t.shape[-2] or t.shape[0] != meta.get("channels", t.shape[0]):
        raise CheckpointError(
            f"{png}: a {tuple(t.shape)} image does not match its metadata (square, {meta.get('channels')} channels)"
        )
    return t.float() / 255, meta
