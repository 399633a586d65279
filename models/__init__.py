"""Models: a [0, 1] NCHW classifier wrapper that owns normalization, plus builders."""

from fragility.models.wrapper import Classifier

__all__ = ["Classifier"]
