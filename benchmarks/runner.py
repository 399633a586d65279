"""``run(cfg)``: one experiment (model x dataset x defense x attack), callable from Python or tests.

Steps: build the model (and defense), load a seeded subset of the data, score clean accuracy,
attack the initially correct samples batch by batch (progress bar), compute metrics, write one
record plus per-sample facts to the store in one transaction, draw pictures, log to W&B, and
re-render the leaderboards. A finished configuration is skipped unless ``force=true``.

Defenses are scored honestly (Athalye, Carlini, Wagner 2018): when the configured defense is
non-differentiable (jpeg, bit_depth, median) or randomized (gaussian_noise, smoothing), the attack
runs in two variants, ``standard`` (the gradients the defense exposes) and ``adaptive`` (BPDA /
EOT, see :mod:`fragility.defenses.base`), each stored as its own record with ``variant`` set and
its own config hash; ``run`` returns the worst of them. ``defense.adaptive=false`` skips the
adaptive variant. A certifying defense (smoothing) adds certified accuracy to every record.

Attacks can hook into the run with optional methods:
- ``prepare(model=, cfg=, device=, seed=, progress=)``: work before evaluation (e.g. train a patch);
- ``extra_metrics(result) -> dict``: numbers for the record's ``extra_json``;
- ``figures(ctx) -> dict[name, Path]``: attack-specific pictures (``ctx`` is a :class:`RunContext`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fragility.attacks.base import AttackResult
from fragility.benchmarks.config import safe_instantiate
from fragility.benchmarks.figures import adversarial_grid
from fragility.benchmarks.leaderboard import write_leaderboards
from fragility.benchmarks.metrics import compute_metrics, perturbation_norms
from fragility.benchmarks.provenance import config_hash, now, versions
from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.wandb_logger import NullLogger
from fragility.datasets import ImageSet, align_labels
from fragility.defenses.base import set_adaptive
from fragility.errors import ConfigError, InputError
from fragility.models.predict import predict
from fragility.rng import mix64

log = logging.getLogger(__name__)
N_EXAMPLES = 8


@dataclass
class RunContext:
    """What a finished run knows; handed to attack hooks and figure makers."""

    cfg: DictConfig
    model: torch.nn.Module
    data: ImageSet
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    result: AttackResult | None  # concatenated over batches, ``adv`` only for the first examples
    examples: dict[str, torch.Tensor]  # clean/adv/labels/... of the first N_EXAMPLES attacked samples
    run_dir: Path
    device: torch.device
    figures: dict[str, Path] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available (use device=auto or cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r} (auto, cpu, cuda)")
    return torch.device(name)


def _check_top_level(cfg: DictConfig) -> tuple[int, int, int]:
    try:
        n, seed, bs = int(cfg.n_samples), int(cfg.seed), int(cfg.batch_size)
    except (TypeError, ValueError):
        raise ConfigError("n_samples, seed and batch_size must be integers") from None
    if n <= 0:
        raise ConfigError(f"n_samples must be positive, got {n}")
    if bs <= 0:
        raise ConfigError(f"batch_size must be positive, got {bs}")
    return n, seed, bs


def build_defense(cfg: DictConfig, allowed: list[str]):
    """The configured defense object, or None for ``defense=none``."""
    defense_cfg = cfg.get("defense")
    if defense_cfg is not None and defense_cfg.get("_target_"):
        return safe_instantiate(defense_cfg, allowed)
    return None


def build_model(cfg: DictConfig, device: torch.device, defense=None) -> torch.nn.Module:
    allowed = list(cfg.get("allowed_targets") or [])
    model = safe_instantiate(cfg.model, allowed)
    if defense is None:
        defense = build_defense(cfg, allowed)
    if defense is not None:
        model = defense.wrap(model)
    return model.to(device).eval()


def variant_hash(resolved: dict, variant: str) -> str:
    """The standard variant keeps the plain config hash; every other variant hashes its name in."""
    return config_hash(resolved) if variant == "standard" else config_hash({**resolved, "variant": variant})


def worst_record(records: list[RunRecord]) -> RunRecord:
    """A defense's reported robustness: the variant with the lowest robust accuracy."""
    return min(records, key=lambda r: (r.robust_acc, r.variant != "adaptive"))


def run(cfg: DictConfig) -> RunRecord:
    """Score one configuration. With a non-differentiable or randomized defense the attack runs
    twice, ``standard`` (gradients as the defense exposes them) and ``adaptive`` (BPDA / EOT),
    each written as its own record; the one returned is the worst case of the two."""
    n_samples, seed, batch_size = _check_top_level(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    allowed = list(cfg.get("allowed_targets") or [])
    defense = build_defense(cfg, allowed)
    variants = ["standard"] + (["adaptive"] if defense is not None and defense.needs_adaptive else [])
    hashes = {v: variant_hash(resolved, v) for v in variants}
    store = ResultStore(cfg.results_dir)
    results_dir = Path(cfg.results_dir)
    force = bool(cfg.get("force", False))
    if all(store.has(h) for h in hashes.values()) and not force:
        recs = [store.get(h) for h in hashes.values()]
        for rec in recs:
            print(
                f"[fragility] {rec.model} / {rec.attack} {rec.params}{_vtag(rec)}: already in {store.path} (config {rec.config_hash}); force=true re-runs it"
            )
        write_leaderboards(store.records(), results_dir)
        return worst_record(recs)

    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    model = build_model(cfg, device, defense)
    source = safe_instantiate(cfg.dataset, allowed)
    data = source.load(n_samples, seed, model.input_size)
    if data.image_size != tuple(model.input_size):
        c, hh, ww = model.input_size
        raise InputError(
            f"dataset {data.name} has {'x'.join(map(str, data.image_size))} images but model {model.name} expects {c}x{hh}x{ww}"
        )
    data = align_labels(data, model.class_names)
    attack = safe_instantiate(cfg.attack, allowed)
    progress = bool(cfg.get("progress", True))
    set_adaptive(model, False)

    clean_pred, clean_conf = predict(model, data, batch_size, device)
    certified = _certify(model, data, batch_size, device, progress) if defense is not None else {}
    records = []
    for variant in variants:
        h = hashes[variant]
        if store.has(h) and not force:
            records.append(store.get(h))
            continue
        set_adaptive(model, variant == "adaptive")
        try:
            rec = _score_variant(
                cfg,
                resolved,
                h,
                variant,
                model,
                defense,
                data,
                attack,
                clean_pred,
                clean_conf,
                certified,
                store,
                results_dir,
                device,
                seed,
                batch_size,
                progress,
                allowed,
            )
        finally:
            set_adaptive(model, False)
        records.append(rec)
    write_leaderboards(store.records(), results_dir)
    if len(records) > 1:
        w = worst_record(records)
        print(
            f"[fragility] {w.defense}: reported robust accuracy (worst of {', '.join(r.variant for r in records)}) {w.robust_acc:.1%} ({w.variant})"
        )
    return worst_record(records)


def _vtag(rec: RunRecord) -> str:
    return "" if rec.variant == "standard" else f" [{rec.variant}]"


def _certify(model, data: ImageSet, batch_size: int, device: torch.device, progress: bool) -> dict[str, Any]:
    """Certified accuracy at the defense's radii, when the defense certifies (randomized smoothing)."""
    d = getattr(model, "defense", None)
    if not hasattr(model, "certify") or not getattr(d, "run_certify", False):
        return {}
    preds, radii = [], []
    for i in tqdm(range(0, len(data), batch_size), desc=f"{model.name} certify", disable=not progress, leave=False):
        p, r = model.certify(data.images(slice(i, i + batch_size)).to(device))
        preds.append(p)
        radii.append(r)
    from fragility.defenses.smoothing import certified_accuracy

    out = certified_accuracy(torch.cat(preds), torch.cat(radii), data.y, d.radii)
    print(
        "[fragility] "
        + model.name
        + " / "
        + d.label()
        + ": "
        + "  ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())
    )
    return out


def _score_variant(
    cfg,
    resolved,
    h,
    variant,
    model,
    defense,
    data,
    attack,
    clean_pred,
    clean_conf,
    certified,
    store,
    results_dir,
    device,
    seed,
    batch_size,
    progress,
    allowed,
) -> RunRecord:
    """Attack the initially correct samples once (in the model's current variant), write the record."""
    defense_name = defense.label() if defense is not None else str((cfg.get("defense") or {}).get("name", "none"))
    if hasattr(attack, "prepare"):
        attack.prepare(model=model, cfg=cfg, device=device, seed=seed, progress=progress)
    targets_all = attack.make_targets(model, data.y)
    attacked = (clean_pred == data.y).nonzero().flatten()

    parts: list[AttackResult] = []
    norms = {k: np.zeros(len(data)) for k in ("linf", "l2", "l0")}
    examples: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    desc = f"{model.name} {attack.name}" + ("" if variant == "standard" else f" [{variant}]")
    bar = tqdm(total=len(attacked), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(attacked), batch_size):
        idx = attacked[start : start + batch_size]
        x = data.images(idx)
        keys = mix64(data.ids[idx] + (seed << 32))
        res = attack(model, x, data.y[idx], targets=None if targets_all is None else targets_all[idx], keys=keys)
        for k, v in perturbation_norms(x.numpy(), res.adv.numpy()).items():
            norms[k][idx.numpy()] = v
        if not examples:
            k = min(N_EXAMPLES, len(idx))
            examples = {"clean": x[:k], "adv": res.adv[:k], "labels": data.y[idx][:k], "idx": idx[:k]}
        res.adv = res.adv[:0]  # keep memory flat: only the examples keep images
        parts.append(res)
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    result = AttackResult.concat(parts) if parts else None

    samples = _samples_frame(data, clean_pred, attacked, result, targets_all, norms)
    metrics = compute_metrics(samples)
    run_dir = results_dir / "runs" / h
    ctx = RunContext(cfg, model, data, clean_pred, clean_conf, result, examples, run_dir, device)
    extra: dict[str, Any] = {}
    if result is not None and hasattr(attack, "extra_metrics"):
        extra.update(attack.extra_metrics(result))
    if defense is not None:
        extra["defense_params"] = defense.params()
        if variant == "adaptive":
            extra["adaptive"] = defense.adaptive_description()
        extra.update(certified)
    ctx.figures.update(_figures(ctx, attack))
    extra["figures"] = [str(p.relative_to(results_dir)) for p in ctx.figures.values()]

    vers = versions()
    eps = attack.budget
    record = RunRecord(
        config_hash=h,
        model=model.name,
        dataset=data.name,
        defense=defense_name,
        attack=attack.name,
        params=attack.describe(),
        norm=str(attack.norm or "none"),
        eps=float("nan") if eps is None else float(eps),
        targeted=attack.targeted,
        n=metrics["n"],
        clean_acc=metrics["clean_acc"],
        robust_acc=metrics["robust_acc"],
        n_attacked=metrics["n_attacked"],
        success_rate=metrics["success_rate"],
        success_ci_low=metrics["success_ci_low"],
        success_ci_high=metrics["success_ci_high"],
        mean_queries=metrics["mean_queries"],
        mean_linf=metrics["mean_linf"],
        mean_l2=metrics["mean_l2"],
        mean_l0=metrics["mean_l0"],
        mean_conf=metrics["mean_conf"],
        mean_true_conf=metrics["mean_true_conf"],
        seconds=seconds,
        seed=seed,
        device=str(device),
        timestamp=now(),
        split=str(extra.pop("split", "test")),
        variant=variant,
        config_json=json.dumps(resolved, default=str),
        extra_json=json.dumps(extra, default=str),
        **vers,
    )
    store.write(record, samples)

    logger = safe_instantiate(cfg.logger, allowed) if cfg.get("logger") is not None else NullLogger()
    try:
        suffix = "" if variant == "standard" else f"-{variant}"
        logger.start(resolved, name=f"{record.model}-{record.attack}{suffix}-{h[:8]}", results_dir=results_dir)
        logger.log_run(metrics, _row(record), dict(ctx.figures.items()))
        if defense is not None:
            from fragility.benchmarks.defense_leaderboard import defense_leaderboard, log_wandb_table

            log_wandb_table(logger, defense_leaderboard(store.records()))
    finally:
        logger.finish()

    ci = f"[{record.success_ci_low:.1%}, {record.success_ci_high:.1%}]" if record.n_attacked else ""
    print(
        f"[fragility] {record.model} / {record.dataset} / {record.defense} / {record.attack} {record.params}{_vtag(record)}: "
        f"clean {record.clean_acc:.1%}  robust {record.robust_acc:.1%}  success {record.success_rate:.1%} {ci}  "
        f"queries {record.mean_queries:.1f}  {seconds:.1f}s  (config {h})"
    )
    return record


def _samples_frame(data, clean_pred, attacked, result, targets_all, norms) -> pd.DataFrame:
    n = len(data)
    adv_pred = clean_pred.clone()
    success = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n, dtype=torch.long)
    pred_conf = torch.full((n,), float("nan"))
    true_conf = torch.full((n,), float("nan"))
    if result is not None:
        adv_pred[attacked] = result.pred
        success[attacked] = result.success
        queries[attacked] = result.queries
        pred_conf[attacked] = result.pred_conf
        true_conf[attacked] = result.true_conf
    target = targets_all if targets_all is not None else torch.full((n,), -1, dtype=torch.long)
    return pd.DataFrame(
        {
            "i": np.arange(n),
            "sample_id": data.ids.numpy(),
            "label": data.y.numpy(),
            "clean_pred": clean_pred.numpy(),
            "adv_pred": adv_pred.numpy(),
            "target": target.numpy(),
            "success": success.numpy().astype(int),
            "queries": queries.numpy(),
            "pred_conf": pred_conf.numpy(),
            "true_conf": true_conf.numpy(),
            "linf": norms["linf"],
            "l2": norms["l2"],
            "l0": norms["l0"],
        }
    )


def _figures(ctx: RunContext, attack) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    if ctx.examples and len(ctx.examples["clean"]):
        ex = ctx.examples
        with torch.inference_mode():
            p = torch.softmax(ctx.model(ex["adv"].to(ctx.device)).float(), 1).cpu()
        conf, pred = p.max(1)
        idx = ex["idx"]
        figs["examples"] = adversarial_grid(
            ex["clean"],
            ex["adv"],
            ex["labels"],
            ctx.clean_pred[idx],
            ctx.clean_conf[idx],
            pred,
            conf,
            ctx.model.class_names,
            ctx.run_dir / "examples.png",
            title=f"{ctx.model.name} / {attack.name} {attack.describe()}",
        )
    if hasattr(attack, "figures"):
        figs.update(attack.figures(ctx) or {})
    if ctx.cfg.get("explain", False):
        from fragility.benchmarks.explain import explain_figures

        figs.update(explain_figures(ctx, attack) or {})
    return figs


def _row(r: RunRecord) -> dict[str, Any]:
    from fragility.benchmarks.leaderboard import COLUMNS

    return {c: getattr(r, c) for c in COLUMNS}
