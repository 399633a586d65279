"""An inference copy of a model for score-only queries: BatchNorm folded into the convolutions.

A query-bound attack (Square on a robust model's survivors) spends its time in no-grad forward
passes of an eval-mode network at small batches, where a ResNet's BatchNorm layers and the Python
dispatch of its nested modules are a tenth of each pass. In eval mode ``BN(conv(x))`` is one
convolution with rescaled weights and a bias, so a copy with the two folded computes the same
logits (to float rounding) in fewer steps: resnet20 on one CPU thread, 10 images per call, 6.3 ->
5.7 ms in bf16 and 9.9 -> 9.1 ms in fp32 (``benchmarks/peers/bench_forward.py --fold``).

The folding itself is torch's ``torch.fx.experimental.optimization.fuse`` (a deep copy traced with
torch.fx, conv+BN pairs whose convolution feeds only the BatchNorm replaced by one convolution);
this module only decides when a copy is safe and caches it per model. There is none (``None``) for
a model that:

- is in training mode anywhere (BatchNorm then uses batch statistics);
- has no BatchNorm (nothing to gain);
- has forward or backward hooks, or there are global ones (a traced copy would not call the hooks
  of the modules it flattens, e.g. Grad-CAM's);
- replaces ``forward`` per instance (``model.compile=true``: Inductor already fuses BN) or reports
  ``last_passes`` (EOT and smoothing wrappers run their network several times per call);
- torch.fx cannot trace (data-dependent control flow, TorchScript, most input transformations).

The copy is never trained and never seen by the caller's hooks; it is rebuilt when any parameter or
buffer of the model changes (a tensor's version counter moves with every in-place update, such as
``load_state_dict`` or an optimizer step). Callers that decide success on the copy's logits must
confirm it on the model itself, as Square does.
"""

from __future__ import annotations

import logging
import weakref
from itertools import chain

import torch
from torch import nn

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module | None]] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in chain(model.parameters(), model.buffers()))


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
    return None


def folded_copy(model: nn.Module) -> nn.Module | None:
    """An eval-mode copy of ``model`` with BatchNorm folded into the preceding convolutions, or
    ``None`` where that is not safe or not possible (see the module docstring). Cached per model
    until its parameters or buffers change."""
    reason = why_not(model)
    if reason is not None:
        log.debug("no folded copy of %s: %s", type(model).__name__, reason)
        return None
    key = _fingerprint(model)
    hit = _cache.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    from torch.fx.experimental.optimization import fuse

    try:
        with torch.no_grad():
            copy = fuse(model, inplace=False).eval()
    except Exception as e:  # torch.fx fails on anything it cannot trace, in many exception types
        log.debug("no folded copy of %s: %s: %s", type(model).__name__, type(e).__name__, e)
        copy = None
    if copy is not None:
        copy.requires_grad_(False)
    _cache[model] = (key, copy)
    return copy
