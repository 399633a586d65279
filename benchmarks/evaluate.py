"""``evaluate(model, images, labels, ...)``: the whole harness for a network held in Python.

RobustBench and AutoAttack users evaluate a model object in one call. Here that call is the same
run the command line makes (``benchmarks/runner.py``): the clean pass and its output checks, the
attack, the gradient-masking checks, escalation to a stronger attack when one fires, the adaptive
variant behind a defense, the store and the leaderboards. The model and the images enter the
config as ``model=given`` and ``dataset=given`` (``models/given.py``, ``datasets/given.py``), keyed
by the SHA-256 of their content, so a repeated call is answered from the store and changed weights
are run again. Attack settings are keyword arguments (``eps=8/255``); anything else is a Hydra
override (``overrides=["defense.quality=50", "checks.probe_n=64"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from fragility.benchmarks.record import RunRecord
from fragility.datasets.given import register as register_images
from fragility.errors import ConfigError
from fragility.models.given import build as given_model
from fragility.models.given import register as register_model


def evaluate(
    model: nn.Module,
    images,
    labels,
    attack: str = "autoattack",
    *,
    defense: str = "none",
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    dataset_name: str = "given",
    results_dir: str = "results",
    n_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    overrides: Sequence[str] = (),
    **attack_settings: Any,
) -> RunRecord:
    """Score ``model`` (a [0, 1] NCHW classifier: a fragility ``Classifier``, or any module that
    normalizes inside) on ``images`` (N, C, H, W, float in [0, 1] or uint8) and ``labels`` with
    ``attack`` (a name of ``conf/attack``) and its ``attack_settings``, and return the reported
    record: the worst of the variants and escalations the run wrote. ``n_samples`` (default: all)
    draws a seeded subset. Errors a user can fix raise :class:`fragility.errors.FragilityError`
    with one line."""
    from fragility.benchmarks.apps import precheck, pregate
    from fragility.benchmarks.runner import run

    size = tuple(images.shape[1:]) if hasattr(images, "shape") and len(images.shape) == 4 else None
    if size is None:
        raise ConfigError(f"images must be (N, C, H, W), got shape {tuple(getattr(images, 'shape', ()))}")
    model_key = register_model(model, size, class_names, name)
    data_key = register_images(images, labels, given_model(model_key).class_names)
    args = [
        "model=given",
        f"model.key={model_key}",
        "dataset=given",
        f"dataset.key={data_key}",
        f"dataset.name={_value(dataset_name)}",
        f"attack={attack}",
        f"defense={defense}",
        "logger=none",
        f"results_dir={_value(str(results_dir))}",
        f"n_samples={len(labels) if n_samples is None else n_samples}",
        f"seed={seed}",
        f"batch_size={batch_size}",
        f"device={device}",
        f"progress={_value(bool(progress))}",
        *(f"attack.{k}={_value(v)}" for k, v in attack_settings.items()),
        *overrides,
    ]
    precheck(args)
    pregate(args, "config")  # the command line's gate: unknown names and settings, every _target_
    return run(_compose(args))


def _compose(args: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import fragility.benchmarks.config  # noqa: F401  (registers the frac resolver)

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
            return compose(config_name="config", overrides=args)
    finally:
        GlobalHydra.instance().clear()


def _value(v: Any) -> str:
    """``v`` in Hydra's override grammar: numbers exact (``repr``), strings quoted, lists and None."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"attack settings must be finite, got {v}")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    s = str(v)
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
