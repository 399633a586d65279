"""Models: a [0, 1] NCHW classifier wrapper that owns normalization, plus builders."""

from fragility.models.predict import predict
from fragility.models.wrapper import Classifier, eval_mode

__all__ = ["Classifier", "eval_mode", "predict"]
