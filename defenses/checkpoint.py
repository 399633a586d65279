"""An adversarially trained model as a defense: the same architecture with other weights.

``wrap(model)`` copies the model's network, loads ``path`` into it (``weights_only=True``, strict
key and shape check) and keeps the model's normalization, input size and class names, so a
leaderboard row reads (cifar_resnet20, checkpoint(resnet20_fgsm_rs)). Checkpoints written by
``fragility-train`` (``model.pt``) fit directly. Differentiable and deterministic: the standard
gradient attack is already the adaptive one.

Example::

    defended = Checkpoint(path="results/train/resnet20_fgsm_rs/model.pt").wrap(model)
"""

from __future__ import annotations

import copy
from pathlib import Path

from fragility.defenses.base import DefendedClassifier, Defense
from fragility.errors import ConfigError
from fragility.models.checkpoint import identify, load_weights


class Checkpoint(Defense):
    name = "checkpoint"

    def __init__(self, *, path: str | None = None, label: str | None = None, **kw) -> None:
        super().__init__(**kw)
        # the path is checked when wrapping, so the config file instantiates without one (config tests)
        self.path = Path(str(path)).expanduser() if path else None
        p = self.path
        self.tag = label or ("unset" if p is None else p.parent.name if p.stem in ("model", "last") and p.parent.name else p.stem)

    def label(self) -> str:
        return f"checkpoint({self.tag})"

    def wrap(self, model):
        if self.path is None:
            raise ConfigError("defense=checkpoint needs defense.path (a state dict for the model's architecture)")
        if not hasattr(model, "net"):
            raise ConfigError(
                f"defense=checkpoint needs a Classifier with a .net to load weights into, got {type(model).__name__}"
            )
        clone = copy.deepcopy(model)
        load_weights(clone.net, self.path, normalization=(clone.mean, clone.std))
        # the network now holds this file's weights: records and the per-sample worst case must say
        # so (the base model's hash would merge two checkpoints trained into one folder)
        identify(clone, self.path, rename=False)
        return DefendedClassifier(clone.eval(), self)
