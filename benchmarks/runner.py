"""``run(cfg)``: one experiment (model x dataset x defense x attack), callable from Python or tests.

Steps: build the model (and defense), load a seeded subset of the data, score clean accuracy,
attack the initially correct samples batch by batch (progress bar), compute metrics, write one
record plus per-sample facts to the store in one transaction, draw pictures, log to W&B, and
re-render the leaderboards. A finished configuration is skipped unless ``force=true``; one
stopped part way resumes after its last finished batch (:mod:`fragility.benchmarks.partial`).

Defenses are scored honestly (Athalye, Carlini, Wagner 2018): when the configured defense is
non-differentiable (jpeg, bit_depth, median) or randomized (gaussian_noise, smoothing), the attack
runs in two variants, ``standard`` (the gradients the defense exposes) and ``adaptive`` (BPDA /
EOT, see :mod:`fragility.defenses.base`), each stored as its own record with ``variant`` set and
its own config hash; ``run`` returns the worst of them. ``defense.adaptive=false`` skips the
adaptive variant. A certifying defense (smoothing) adds certified accuracy to every record.

The path of one run: :func:`run` checks the store, :meth:`Trial.build` builds the model behind
its defense, the data and the attack and scores the clean images, :meth:`Trial.score` attacks
the correctly classified images in one variant (inside :func:`~fragility.defenses.adaptive_mode`)
and writes one :class:`RunRecord` plus per-sample facts; the leaderboards are rendered last.

What attacks may offer the runner (all optional):
- ``trains = True`` and ``prepare(model, train=, held_out=, device=, progress=)``: learn before
  evaluation (the patch); the runner hands it :meth:`Trial.training_data`;
- ``extra_metrics(result) -> dict``: numbers for the record's ``extra_json``;
- ``sample_extras``: names of per-sample tensors in ``result.extras`` stored with each sample;
- pictures are drawn by :mod:`fragility.benchmarks.figures` from the result.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fragility.attacks.base import AttackResult
from fragility.benchmarks.checks import CheckSettings, Flag, check_names, format_flags, run_checks
from fragility.benchmarks.config import check_config, safe_instantiate
from fragility.benchmarks.escalation import EscalationSettings, Plan, attack_with, eot_model, plan
from fragility.benchmarks.explain import explain_figures
from fragility.benchmarks.figures import run_figures
from fragility.benchmarks.inputs import with_inputs
from fragility.benchmarks.leaderboard import board_row, defense_leaderboard, log_wandb_table, write_leaderboards
from fragility.benchmarks.metrics import METRIC_FIELDS, compute_metrics, perturbation_norms
from fragility.benchmarks.partial import (
    PARTIAL,
    PartialRun,
    attack_state,
    model_digest,
    partial_key,
    rng_state,
    set_rng_state,
    start_streams,
)
from fragility.benchmarks.provenance import config_hash, now, versions
from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.validate import MEANING, validate_clean
from fragility.benchmarks.wandb_logger import NullLogger
from fragility.benchmarks.worst_case import samples_for
from fragility.datasets import ImageSet, align_labels, source_label
from fragility.defenses import adaptive_mode
from fragility.errors import ConfigError, InputError, first_line
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


MAX_SEED = 2**31 - 1  # per-sample random keys are mix64(id + (seed << 32)): the seed must fit 31 bits


def _check_top_level(cfg: DictConfig) -> tuple[int, int, int]:
    """Counts are integers, exactly: ``n_samples=300.9`` or ``batch_size=1.5`` is an error, never
    a truncation."""
    values = {}
    for key in ("n_samples", "seed", "batch_size"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
        values[key] = v
    n, seed, bs = values["n_samples"], values["seed"], values["batch_size"]
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
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


def attack_needs_gradients(resolved: dict) -> bool:
    """Whether the configured attack asks the model for gradients (its class's ``needs_gradients``;
    True where that cannot be told). BPDA and EOT change only the backward pass, so a score-only
    attack (Square, Sparse-RS, one-pixel) sees the same model in both variants: its adaptive
    variant would repeat the standard run at twice the cost, and is not run."""
    target = (resolved.get("attack") or {}).get("_target_")
    try:
        cls = get_class(str(target))  # through the instantiate gate already (check_config)
    except Exception:  # not a class (a factory function): assume gradients, and run both variants
        return True
    return bool(getattr(cls, "needs_gradients", True))


def worst_record(records: list[RunRecord]) -> RunRecord:
    """A defense's reported robustness: the variant with the lowest robust accuracy."""
    return min(records, key=lambda r: (r.robust_acc, r.variant != "adaptive"))


def escalated_from(store: ResultStore, hashes: set[str]) -> list[RunRecord]:
    """The stored escalated rows of the runs ``hashes`` (their config names ``escalated_from``)."""
    out = []
    for r in store.records(variant_like="%escalated"):  # the filter runs in the database, not over every row
        if r.variant.endswith("escalated"):
            try:
                origin = json.loads(r.config_json or "{}").get("escalated_from")
            except json.JSONDecodeError:
                continue
            if origin in hashes:
                out.append(r)
    return out


@dataclass(frozen=True)
class Escalation:
    """The escalated attack of one stored run: its plan, variant name, resolved config and hash."""

    plan: Plan
    variant: str
    resolved: dict
    config_hash: str


def escalation_for(
    cfg: DictConfig, defense, resolved: dict, variant: str, config_hash: str, flags: list[Flag] | list[str]
) -> Escalation | None:
    """What answers the fired checks ``flags`` of the run ``config_hash`` in ``variant``
    (:func:`fragility.benchmarks.escalation.plan`), as variant ``escalated`` (``<variant>-escalated``
    for a non-standard variant); None when ``escalate=false`` or nothing is left to answer. An
    adaptive run of a defense already answers its randomness (EOT) and its zero gradients (BPDA);
    a standard run of such a defense leaves them to its adaptive variant."""
    if not flags or not bool(cfg.get("escalate", True)):
        return None
    d = defense
    if d is not None and (not d.differentiable or d.randomized) and not d.adaptive:
        return None  # defense.adaptive=false: the user asked for this defense's plain attack only; flags stay
    answered: set[str] = set()
    if d is not None and d.needs_adaptive:
        if variant == "standard" and attack_needs_gradients(resolved):
            return None  # its adaptive variant escalates (a score-based attack has only this one)
        answered |= {"random"} if d.randomized else set()
        answered |= {"zero_grad"} if not d.differentiable else set()
    p = plan(flags, cfg.attack, EscalationSettings.from_config(cfg.get("escalation")), answered)
    if p is None:
        return None
    name = "escalated" if variant == "standard" else f"{variant}-escalated"
    esc_resolved = {**resolved, "attack": OmegaConf.to_container(p.attack, resolve=True), "escalated_from": config_hash}
    return Escalation(p, name, esc_resolved, variant_hash(esc_resolved, name))


def run(cfg: DictConfig) -> RunRecord:
    """Score one configuration. With a non-differentiable or randomized defense the attack runs
    twice, ``standard`` (gradients as the defense exposes them) and ``adaptive`` (BPDA / EOT),
    each written as its own record; the one returned is the worst case of the two."""
    n_samples, seed, batch_size = _check_top_level(cfg)
    CheckSettings.from_config(cfg.get("checks"))  # an impossible setting stops here, before any work
    # the instantiate gate, on every _target_, before any work; then the content of the files the
    # run reads, so that new weights or data under an old path are never answered from the store
    resolved = with_inputs(check_config(cfg))
    allowed = list(cfg.get("allowed_targets") or [])
    defense = build_defense(cfg, allowed)
    adaptive = defense is not None and defense.needs_adaptive and attack_needs_gradients(resolved)
    variants = ["standard"] + (["adaptive"] if adaptive else [])
    hashes = {v: variant_hash(resolved, v) for v in variants}
    store = ResultStore.for_config(cfg)
    results_dir = Path(cfg.results_dir)
    force = bool(cfg.get("force", False))
    done = {v: store.get(h) for v, h in hashes.items()} if not force else {}
    # a stored row whose masking checks fired but whose escalation never finished (the run was
    # interrupted, or the machine lost, between the two writes) gets that escalation now: a rerun
    # must not leave the unanswered, flagged number as the configuration's result
    unanswered = {
        v: e
        for v, rec in done.items()
        if rec is not None
        and (e := escalation_for(cfg, defense, resolved, v, rec.config_hash, check_names(rec.flags))) is not None
        and store.get(e.config_hash) is None
    }
    if not force and all(rec is not None for rec in done.values()) and not unanswered:
        for rec in done.values():
            print(
                f"[fragility] {rec.model} / {rec.attack} {rec.params}{_vtag(rec)}: already in {store.path} "
                f"(config {rec.config_hash}); force=true re-runs it"
            )
        render_leaderboards(store, results_dir)
        # the escalated rows count as on the first run: the worst case is the same either way
        return worst_record([*done.values(), *escalated_from(store, set(hashes.values()))])

    trial = Trial.build(cfg, resolved, defense, store, n_samples=n_samples, seed=seed, batch_size=batch_size)
    records = [done.get(v) or trial.score(v, hashes[v]) for v in variants]
    for v, e in unanswered.items():
        rec = done[v]
        print(
            f"[fragility] {rec.model} / {rec.attack} {rec.params}{_vtag(rec)}: already in {store.path}, but its "
            f"escalation ({rec.flags}) did not finish; running it now"
        )
        records.append(trial.run_escalation(e, v))
    render_leaderboards(store, results_dir)
    if len(records) > 1:
        w = worst_record(records)
        print(
            f"[fragility] {w.defense}: reported robust accuracy (worst of {', '.join(r.variant for r in records)}) "
            f"{w.robust_acc:.1%} ({w.variant})"
        )
    return worst_record(records)


def fit_to(attack, model) -> list[str]:
    """Fit the attack's class-count settings to the model (:meth:`Attack.fit_classes`), so that the
    row's parameters are the ones that ran."""
    classes = getattr(model, "num_classes", None)
    return attack.fit_classes(int(classes)) if classes and hasattr(attack, "fit_classes") else []


@dataclass
class Trial:
    """One experiment once its inputs are built: the model (behind its defense), the data, the
    attack and the clean predictions. :meth:`score` attacks it in one variant and writes a record."""

    cfg: DictConfig
    resolved: dict
    model: torch.nn.Module
    defense: Any
    source: Any
    data: ImageSet
    attack: Any
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    certified: dict[str, Any]
    store: ResultStore
    device: torch.device
    seed: int
    batch_size: int
    progress: bool
    allowed: list[str]
    output_flags: list[str] = field(default_factory=list)  # from the clean pass (benchmarks/validate.py)

    @classmethod
    def build(cls, cfg, resolved, defense, store, *, n_samples: int, seed: int, batch_size: int) -> Trial:
        allowed = list(cfg.get("allowed_targets") or [])
        device = resolve_device(cfg.device)
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        model = build_model(cfg, device, defense)
        if getattr(model, "untrained", ""):
            print(
                f"[fragility] warning: {model.name} has random weights ({model.untrained}): its numbers describe an "
                "untrained network"
            )
        source = safe_instantiate(cfg.dataset, allowed)
        data = load_matching(source, n_samples, seed, model, "dataset")
        attack = safe_instantiate(cfg.attack, allowed)
        for note in fit_to(attack, model):
            print(f"[fragility] {note}")
        progress = bool(cfg.get("progress", True))
        with adaptive_mode(model, False):
            clean_pred, clean_conf = predict(model, data, batch_size, device)
            output_flags = validate_clean(model, data, clean_conf, device)
            if output_flags:
                why = "; ".join(MEANING.get(f.split()[0], "") for f in output_flags)
                print(f"[fragility] {model.name}: flags: {'; '.join(output_flags)} ({why})")
            certified = _certify(model, data, batch_size, device, progress) if defense is not None else {}
        return cls(
            cfg,
            resolved,
            model,
            defense,
            source,
            data,
            attack,
            clean_pred,
            clean_conf,
            certified,
            store,
            device,
            seed,
            batch_size,
            progress,
            allowed,
            output_flags,
        )

    @property
    def results_dir(self) -> Path:
        return Path(self.cfg.results_dir)

    @property
    def defense_name(self) -> str:
        if self.defense is not None:
            return self.defense.label()
        return str((self.cfg.get("defense") or {}).get("name", "none"))

    def training_data(self) -> ImageSet:
        """Training images for an attack that learns (the patch): ``attack.train_dataset`` when
        given, else the evaluated source's own train split, else the evaluated source itself (the
        attack drops the evaluated images from it)."""
        given = getattr(self.attack, "train_dataset", None)
        if given is not None:
            source = given if hasattr(given, "load") else safe_instantiate(OmegaConf.create(dict(given)), self.allowed)
        else:
            source = self.source.train_split(getattr(self.attack, "train_path", None)) or self.source
        data = load_matching(source, getattr(self.attack, "train_n", None), self.seed + 1, self.model, "training data")
        return replace(data, name=source_label(source, data))

    def score(self, variant: str, config_hash: str) -> RunRecord:
        """Attack the initially correct samples once in ``variant``, run the gradient-masking
        checks, store the record (with its ``flags``), log it. When a check fires and
        ``escalate`` is on, the attack that answers it runs as its own record
        (:meth:`_escalate`); the worse of the two is returned."""
        with adaptive_mode(self.model, variant == "adaptive"):
            if getattr(self.attack, "trains", False):
                held_out = replace(self.data, name=source_label(self.source, self.data))
                self.attack.prepare(
                    self.model, train=self.training_data(), held_out=held_out, device=self.device, progress=self.progress
                )
            result, examples, norms, seconds = self._attack_all(variant, config_hash)
            flags = self._checks(result)
        stored = "; ".join(f for f in [*self.output_flags, _nonfinite_flag(result), format_flags(flags)] if f)
        record = self._record(variant, config_hash, result, examples, norms, seconds, flags=stored)
        escalated = self._escalate(variant, config_hash, flags) if flags else None
        return record if escalated is None else worst_record([record, escalated])

    def _checks(self, result: AttackResult | None) -> list[Flag]:
        """The gradient-masking checks (:mod:`fragility.benchmarks.checks`) on the first attacked
        images, in the variant's mode; printed with the row."""
        settings = CheckSettings.from_config(self.cfg.get("checks"))
        if result is None or not settings.enabled:
            return []
        idx = self._attacked[: settings.probe_n]
        x, y = self.data.images(idx).to(self.device), self.data.y[idx].to(self.device)
        t = None if self._targets is None else self._targets[idx].to(self.device)
        keys = mix64(self.data.ids[idx] + (self.seed << 32))

        def make_attack(**overrides):
            attack = safe_instantiate(attack_with(self.cfg.attack, **overrides), self.allowed)
            fit_to(attack, self.model)
            return attack

        flags = run_checks(
            self.model,
            x,
            y,
            result.success[: len(idx)],
            attack=self.attack,
            make_attack=make_attack,
            targets=t,
            keys=keys,
            settings=settings,
        )
        if flags:
            print(f"[fragility] {self.model.name} / {self.attack.name}: masking checks fired: {format_flags(flags)}")
        return flags

    def _escalate(self, variant: str, config_hash: str, flags: list[Flag]) -> RunRecord | None:
        """Score the attack that answers ``flags`` (:func:`escalation_for`) as its own record, or
        None when nothing is to be escalated; a stored escalation is reused unless ``force``."""
        e = escalation_for(self.cfg, self.defense, self.resolved, variant, config_hash, flags)
        if e is None:
            return None
        if not bool(self.cfg.get("force", False)) and (done := self.store.get(e.config_hash)) is not None:
            return done
        return self.run_escalation(e, variant)

    def run_escalation(self, e: Escalation, variant: str) -> RunRecord:
        """Attack with the escalated attack ``e`` (in ``variant``'s mode) and write its record."""
        p = e.plan
        model = eot_model(self.model, p.eot_samples) if p.eot_samples > 1 else self.model
        attack = safe_instantiate(p.attack, self.allowed)
        fit_to(attack, model)
        trial = replace(self, attack=attack, model=model, resolved=e.resolved)
        print(f"[fragility] escalating {self.attack.name} [{variant}] -> {p.describe()}")
        with adaptive_mode(model, variant == "adaptive"):
            if model is not self.model:
                model.adaptive = True  # EOT over the model's own randomness
            result, examples, norms, seconds = trial._attack_all(e.variant, e.config_hash)
        return trial._record(e.variant, e.config_hash, result, examples, norms, seconds)

    def _attack_all(self, variant: str, config_hash: str):
        """Attack the correctly classified images batch by batch. The finished batches are kept in
        ``runs/<config_hash>/partial.pt`` (:mod:`fragility.benchmarks.partial`), so a run stopped
        part way resumes after its last finished batch."""
        attack, data = self.attack, self.data
        targets_all = attack.make_targets(self.model, data.y)
        attacked = (self.clean_pred == data.y).nonzero().flatten()
        parts: list[AttackResult] = []
        norms = {k: np.zeros(len(data)) for k in ("linf", "l2", "l0")}
        examples: dict[str, torch.Tensor] = {}
        key = partial_key(config_hash, attacked, self.batch_size, model_digest(self.model), versions(), attack_state(attack))
        partial = PartialRun(self.results_dir / "runs" / config_hash / PARTIAL, key)
        desc = f"{self.model.name} {attack.name}" + ("" if variant == "standard" else f" [{variant}]")
        first, before = 0, 0.0
        start_streams(self.model, config_hash)
        if bool(self.cfg.get("force", False)):
            partial.remove()  # force: every batch again
        elif (state := partial.load()) is not None:
            first, parts, norms, examples, before = (state[k] for k in ("done", "parts", "norms", "examples", "seconds"))
            set_rng_state(self.model, state["rng"], self.device)  # a randomized defense draws on as before
            print(f"[fragility] {desc}: resuming after {first}/{len(attacked)} images attacked before ({partial.path})")
        t0 = time.perf_counter()
        bar = tqdm(total=len(attacked), initial=first, desc=desc, unit="img", disable=not self.progress, leave=False)
        for start in range(first, len(attacked), self.batch_size):
            idx = attacked[start : start + self.batch_size]
            x = data.images(idx)
            keys = mix64(data.ids[idx] + (self.seed << 32))
            res = attack(self.model, x, data.y[idx], targets=None if targets_all is None else targets_all[idx], keys=keys)
            for k, v in perturbation_norms(x.numpy(), res.adv.numpy()).items():
                norms[k][idx.numpy()] = v
            if not examples:
                k = min(N_EXAMPLES, len(idx))
                examples = {"clean": x[:k], "adv": res.adv[:k], "labels": data.y[idx][:k], "idx": idx[:k]}
            res.adv = res.adv[:0]  # keep memory flat: only the examples keep images
            parts.append(res)
            bar.update(len(idx))
            if start + len(idx) < len(attacked) and partial.due():
                partial.save(start + len(idx), parts, norms, examples, before + time.perf_counter() - t0, rng_state(self.model))
        bar.close()
        seconds = before + time.perf_counter() - t0
        result = AttackResult.concat(parts) if parts else None
        self._targets, self._attacked = targets_all, attacked
        return result, examples, norms, seconds

    def _record(self, variant, h, result, examples, norms, seconds, flags: str = "") -> RunRecord:
        attack, data, defense = self.attack, self.data, self.defense
        samples = _samples_frame(data, self.clean_pred, self._attacked, result, self._targets, norms, attack)
        metrics = compute_metrics(samples)
        run_dir = self.results_dir / "runs" / h
        ctx = RunContext(self.cfg, self.model, data, self.clean_pred, self.clean_conf, result, examples, run_dir, self.device)
        extra: dict[str, Any] = {}
        # an attack whose metrics stand without attacked images (shape bias: a model that never decides
        # by shape attacks nothing and still has a bias of 0) sets ``metrics_without_result``
        if hasattr(attack, "extra_metrics") and (result is not None or getattr(attack, "metrics_without_result", False)):
            extra.update(attack.extra_metrics(result))
        if defense is not None:
            extra["defense_params"] = defense.params()
            if variant == "adaptive":
                extra["adaptive"] = defense.adaptive_description()
            extra.update(self.certified)
        hooks = [run_figures] + ([explain_figures] if self.cfg.get("explain", False) else [])
        for hook in hooks:
            # a picture that cannot be drawn must not cost the numbers it illustrates (an AutoAttack run
            # can take hours): the failure is logged and recorded, the run is stored
            try:
                ctx.figures.update(hook(ctx, attack) or {})
            except Exception as e:  # matplotlib, captum and PIL fail in many exception types
                why = f"{type(e).__name__}: {first_line(e)}"
                log.warning("%s failed (%s); the run's result is kept without those figures", hook.__name__, why)
                extra.setdefault("figure_errors", []).append(f"{hook.__name__}: {why}")
        extra["figures"] = [str(p.relative_to(self.results_dir)) for p in ctx.figures.values()]
        eps = attack.budget
        record = RunRecord(
            config_hash=h,
            model=self.model.name,
            dataset=data.name,
            defense=self.defense_name,
            attack=attack.name,
            params=attack.describe(),
            norm=str(attack.norm or "none"),
            eps=float("nan") if eps is None else float(eps),
            targeted=attack.targeted,
            **{k: metrics[k] for k in METRIC_FIELDS},
            seconds=seconds,
            seed=self.seed,
            device=str(self.device),
            timestamp=now(),
            split=str(extra.pop("split", "test")),
            variant=variant,
            config_json=json.dumps(self.resolved, default=str),
            extra_json=json.dumps(extra, default=str),
            **versions(),
            flags=flags,
            weights_sha256=str(getattr(self.model, "weights_sha256", "") or ""),
        )
        self.store.write(record, samples)
        PartialRun(run_dir / PARTIAL, "").remove()  # the run is stored: its finished batches are not needed
        self._log(record, metrics, ctx)
        if record.n_attacked:
            success = f"{record.success_rate:.1%} [{record.success_ci_low:.1%}, {record.success_ci_high:.1%}]"
            queries = f"{record.mean_queries:.1f}"
        else:  # no image was classified correctly: there was nothing to attack
            success = queries = "n/a"
        print(
            f"[fragility] {record.model} / {record.dataset} / {record.defense} / {record.attack} {record.params}{_vtag(record)}: "
            f"clean {record.clean_acc:.1%}  robust {record.robust_acc:.1%}  success {success}  "
            f"queries {queries}  {seconds:.1f}s  (config {h})" + (f"  flags: {flags}" if flags else "")
        )
        if record.n and not record.n_attacked:
            print(
                f"[fragility] warning: the model classifies none of the {record.n} images correctly, so nothing was "
                "attacked; check that the dataset's labels and class names match the model's"
            )
        return record

    def _log(self, record: RunRecord, metrics: dict, ctx: RunContext) -> None:
        logger = safe_instantiate(self.cfg.logger, self.allowed) if self.cfg.get("logger") is not None else NullLogger()
        if type(logger) is not NullLogger:  # the local leaderboards are current before any network step (W&B)
            render_leaderboards(self.store, self.results_dir)
        try:
            suffix = "" if record.variant == "standard" else f"-{record.variant}"
            name = f"{record.model}-{record.attack}{suffix}-{record.config_hash[:8]}"
            logger.start(self.resolved, name=name, results_dir=self.results_dir)
            logger.log_run(metrics, board_row(record), dict(ctx.figures))
            if self.defense is not None:
                log_wandb_table(logger, defense_leaderboard(self.store.records()))
        finally:
            logger.finish()


def render_leaderboards(store: ResultStore, out_dir) -> None:
    """Re-render every board from the store, the summary counting an image robust only if it
    survives every attack at its threat model (per-sample worst case)."""
    records = store.records()
    write_leaderboards(records, out_dir, samples=samples_for(store, records))


def load_matching(source, n: int | None, seed: int, model, what: str) -> ImageSet:
    """A seeded subset of ``source`` whose image size and class list fit ``model``."""
    data = source.load(n, seed, model.input_size)
    if data.image_size != tuple(model.input_size):
        c, hh, ww = model.input_size
        raise InputError(
            f"{what} {data.name} has {'x'.join(map(str, data.image_size))} images but model {model.name} expects {c}x{hh}x{ww}"
        )
    return align_labels(data, model.class_names)


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


def _samples_frame(data, clean_pred, attacked, result, targets_all, norms, attack) -> pd.DataFrame:
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
    frame = pd.DataFrame(
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
    frame["extras"] = _sample_extras(n, attacked, result, attack)
    return frame


def _nonfinite_flag(result: AttackResult | None) -> str:
    """``nonfinite_logits k/n`` when the model's logits turned NaN/Inf on k attacked images (those
    count as failed attacks: the row's robustness says nothing about them)."""
    bad = None if result is None else result.extras.get("nonfinite_logits")
    if not torch.is_tensor(bad) or not bool(bad.any()):
        return ""
    return f"nonfinite_logits {int(bad.sum())}/{len(bad)}"


def _finite_or_none(v):
    """Strict JSON: a non-finite float (e.g. FAB's norm when it found nothing) is stored as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _sample_extras(n: int, attacked: torch.Tensor, result: AttackResult | None, attack) -> list[str | None]:
    """One JSON object per sample of the attack's ``sample_extras`` (None for samples not attacked)."""
    names = [k for k in getattr(attack, "sample_extras", ()) if result is not None and k in result.extras]
    if result is not None and bool(result.extras.get("nonfinite_logits", torch.zeros(0, dtype=torch.bool)).any()):
        names.append("nonfinite_logits")  # which samples turned the model's logits NaN/Inf (attacks/base.py)
    out: list[str | None] = [None] * n
    if not names:
        return out
    cols = {k: result.extras[k].tolist() if torch.is_tensor(result.extras[k]) else list(result.extras[k]) for k in names}
    for j, i in enumerate(attacked.tolist()):
        out[i] = json.dumps({k: _finite_or_none(cols[k][j]) for k in names}, allow_nan=False)
    return out
