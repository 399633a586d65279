"""Per-sample attack objectives on logits, each one to ASCEND (larger = closer to success).

- ``ce``: cross-entropy of the label (untargeted), minus cross-entropy of the target (targeted).
  Saturates when logits are large (a scaled or overconfident model): its gradient vanishes.
- ``margin``: Carlini & Wagner (S&P 2017) style, on logits: ``max_{j != y} z_j - z_y``
  (untargeted), ``z_t - max_{j != t} z_j`` (targeted). Positive exactly when the attack succeeds.
- ``dlr``: Difference of Logits Ratio (Croce & Hein, ICML 2020, eq. 6 and 7):
  ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` and targeted
  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``pi`` the logits sorted in decreasing order.
  Invariant to shifting and scaling the logits, so a model that multiplies its logits by 1000
  gives the same loss landscape as the unscaled one.

Every function takes ``(logits, labels, targets=None)`` and returns a tensor of shape ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fragility.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _best_other(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``max_{j != cls} z_j`` per row."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.amax(1)


def ce(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    logits = logits.float()
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    logits = logits.float()
    if targets is None:
        return _best_other(logits, labels) - logits.gather(1, labels[:, None])[:, 0]
    return logits.gather(1, targets[:, None])[:, 0] - _best_other(logits, targets)


def dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    logits = logits.float()
    k = logits.shape[1]
    srt = logits.sort(1, descending=True).values
    z_y = logits.gather(1, labels[:, None])[:, 0]
    if targets is None:
        if k < 3:
            raise ConfigError("the dlr loss needs at least 3 classes")
        return -(z_y - _best_other(logits, labels)) / (srt[:, 0] - srt[:, 2] + 1e-12)
    if k < 4:
        raise ConfigError("the targeted dlr loss needs at least 4 classes")
    z_t = logits.gather(1, targets[:, None])[:, 0]
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce, "margin": margin, "dlr": dlr}


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` (``ce``, ``margin``, ``dlr``); a ConfigError names the valid ones."""
    key = str(name).lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r} (valid: {', '.join(LOSSES)})")
    return LOSSES[key]
