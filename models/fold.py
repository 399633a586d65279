"""An inference copy of a model for score-only queries: BatchNorm folded into the convolutions.

A query-bound attack (Square on a robust model's survivors) spends its time in no-grad forward
passes of an eval-mode network at small batches, where a ResNet's BatchNorm layers and the Python
dispatch of its nested modules are a sixth of each pass. In eval mode ``BN(conv(x))`` is one
convolution with rescaled weights and a bias, so a copy with the two folded computes the same
logits (to float rounding) in fewer steps: resnet20 on one CPU thread, 2-100 images per call,
1.17-1.31x faster forwards in fp32 and bf16 (``benchmarks/peers/bench_forward.py --fold``,
BENCHMARKS.md).

The folding itself is torch's ``torch.fx.experimental.optimization.fuse`` (a deep copy traced with
torch.fx, conv+BN pairs whose convolution feeds only the BatchNorm replaced by one convolution);
this module only decides when a copy is safe. There is none (``None``) for
a model that:

- is in training mode anywhere (BatchNorm then uses batch statistics);
- has no BatchNorm (nothing to gain);
- has forward or backward hooks, or there are global ones (a traced copy would not call the hooks
  of the modules it flattens, e.g. Grad-CAM's);
- replaces ``forward`` per instance (``model.compile=true``: Inductor already fuses BN) or reports
  ``last_passes`` (EOT and smoothing wrappers run their network several times per call);
- contains a module that declares ``randomized = True`` (a randomized defense: a trace would freeze
  any draw made in Python into one fixed transform);
- torch.fx cannot trace (data-dependent control flow, TorchScript, most input transformations).

The copy is built anew for each call (``QueryCounter`` keeps it for one attack call only): a traced
copy freezes the model's Python attributes and control flow as they were when it was traced, so a
longer-lived cache could go stale in ways no tensor version counter shows (a wrapper's scale factor
changed, a flag toggled). Building it costs ~40 ms for resnet20, small against the thousands of
queries it serves. Callers that decide success on the copy's logits must confirm it on the model
itself, as Square does.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _has_global_hooks() -> bool:
    from torch.nn.modules import module as m

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
    return any(len(getattr(m, name, {})) for name in names)


def why_not(model: nn.Module) -> str | None:
    """Why ``model`` gets no folded copy (``None`` when it may, subject to tracing)."""
    modules = list(model.modules())
    if any(mod.training for mod in modules):
        return "in training mode"
    if not any(isinstance(mod, _BATCHNORMS) for mod in modules):
        return "no BatchNorm"
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if _has_global_hooks() or any(len(getattr(mod, h, {})) for mod in modules for h in hooks):
        return "hooks registered"
    if any("forward" in mod.__dict__ or "last_passes" in mod.__dict__ for mod in modules):
        return "a per-instance forward (compiled, EOT or smoothing wrapper)"
    if any(getattr(mod, "randomized", False) for mod in modules):
        # a randomized defense (defenses/base.py): a trace would freeze any draw made in Python
        # into one fixed transform, a deterministic stand-in for a random model
        return "randomized"
    return None


def folded_copy(model: nn.Module) -> nn.Module | None:
    """A new eval-mode copy of ``model`` with BatchNorm folded into the preceding convolutions, or
    ``None`` where that is not safe or not possible (see the module docstring)."""
    reason = why_not(model)
    if reason is not None:
        log.debug("no folded copy of %s: %s", type(model).__name__, reason)
        return None
    from torch.fx.experimental.optimization import fuse

    try:
        with torch.no_grad():
            copy = fuse(model, inplace=False).eval()
    except Exception as e:  # torch.fx fails on anything it cannot trace, in many exception types
        log.debug("no folded copy of %s: %s: %s", type(model).__name__, type(e).__name__, e)
        return None
    return copy.requires_grad_(False)
