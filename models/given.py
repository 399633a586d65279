"""A model handed over as a Python object (``fragility.benchmarks.evaluate``), not built from a file.

The harness builds every model from its config. ``model=given model.key=<sha256>`` finds a
network registered in this process by :func:`register`, keyed by the SHA-256 of its weights
(with its input size and class names), so the stored key of a run holds the weights it scored:
the same weights again are answered from the store, changed weights are run again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from fragility.errors import ConfigError, InputError
from fragility.models.checkpoint import state_sha256, unchanged_since_identified
from fragility.models.wrapper import Classifier

_GIVEN: dict[str, nn.Module] = {}


def register(
    model: nn.Module,
    input_size: Sequence[int],
    class_names: Sequence[str] | None = None,
    name: str | None = None,
) -> str:
    """Keep ``model`` for ``model=given`` and return its key. A fragility ``Classifier`` (or a
    defended one) is used as it is; any other module is taken as a [0, 1] NCHW classifier that
    normalizes inside, and wrapped with identity normalization. ``class_names`` default to the
    model's own, else ``"0"``, ``"1"``, ... for as many logits as it returns."""
    if not isinstance(model, nn.Module):
        raise InputError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    size = tuple(int(s) for s in input_size)
    if not hasattr(model, "class_names") or not hasattr(model, "input_size"):
        names = list(class_names) if class_names else _class_count_names(model, size)
        c = size[0]
        model = Classifier(model, mean=(0.0,) * c, std=(1.0,) * c, input_size=size, class_names=names, name=type(model).__name__)
    elif class_names and list(class_names) != list(model.class_names):
        raise InputError(f"class_names differ from the model's own ({', '.join(model.class_names[:3])}, ...)")
    else:
        model = copy.copy(model)  # the same network (shared parameters), named here without renaming the caller's
    # a checkpoint's file digest names the weights only while they are the ones loaded from it: a
    # network fine-tuned in Python since is other weights, keyed and named by what it holds now
    state = state_sha256(model)
    same = unchanged_since_identified(model, state)
    weights = (str(getattr(model, "weights_sha256", "") or "") if same else "") or state
    facts = {"weights": weights, "type": f"{type(model).__module__}.{type(model).__qualname__}"}
    facts |= {"input_size": list(model.input_size), "class_names": list(model.class_names)}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    label = name or (model.name if getattr(model, "name", "model") != "model" else type(model).__name__)
    if not name and not same:
        label = label.split("@")[0]  # the suffix named the weights it was loaded with (or @untrained)
    model.name = label if "@" in label else f"{label}@{weights[:8]}"
    model.weights_sha256 = weights
    if not same and getattr(model, "untrained", ""):
        model.untrained = ""  # trained since it was built with random weights
    _GIVEN[key] = model
    return key


def _class_count_names(model: nn.Module, size: tuple[int, ...]) -> list[str]:
    """``"0"`` ... ``"k-1"`` for the k logits ``model`` returns on one grey image."""
    p = next(iter(model.parameters()), None)
    x = torch.full((1, *size), 0.5, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was)
    if not torch.is_tensor(out) or out.dim() != 2:
        raise InputError(f"the model must return (N, classes) logits for (N, {', '.join(map(str, size))}) images")
    return [str(i) for i in range(out.shape[1])]


def build(key: str) -> nn.Module:
    """The model registered under ``key`` in this process."""
    try:
        return _GIVEN[str(key)]
    except KeyError:
        raise ConfigError(
            f"model=given: no model with key {str(key)[:16]}... was handed to fragility.benchmarks.evaluate() in this "
            "process (an object cannot be rebuilt from a config: load it in Python and call evaluate() again)"
        ) from None
