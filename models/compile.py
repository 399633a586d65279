"""``model.compile=true``: run a classifier's forward through ``torch.compile``, once per process.

Every query-bound attack runs at the speed of the model's forward pass; on a CPU, Inductor's fused
kernels (normalization, convolution, BatchNorm and ReLU in one pass) give a small ResNet about twice
the eager throughput (measured in ``benchmarks/peers/bench_sparse_rs.py``). ``channels_last``
stores convolution weights and feeds inputs in NHWC, the layout oneDNN's CPU and cuDNN's GPU
convolution kernels prefer; it is also the eager default of every model builder
(``model.channels_last=true``, :func:`to_channels_last`).

The model object stays the same module (same class, attributes, ``state_dict`` keys); only its
``forward`` is replaced by a wrapper that calls the compiled function. Compiling is lazy (it happens on
the first call, and again when a new input shape needs it), so a failure can only show there: the
wrapper then warns once and runs the eager forward from then on. Calling :func:`compile_model` again
on the same module returns it unchanged (the cache is the module itself, so it lives as long as the
module does, per process).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


class CompiledForward:
    """The forward a compiled module runs: the compiled function, or the eager one after a failure."""

    def __init__(self, eager, compiled, channels_last: bool) -> None:
        self.eager = eager
        self.compiled = compiled
        self.channels_last = channels_last
        self.error: str | None = None

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled is not None:
            try:
                return self.compiled(x, *args, **kwargs)
            except Exception as e:  # torch.compile fails in many ways (no C compiler, backend errors, unsupported ops)
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.compiled = None
                warnings.warn(f"torch.compile failed ({self.error[:200]}); running the eager model", RuntimeWarning, stacklevel=2)
        return self.eager(x, *args, **kwargs)


def compile_model(model: nn.Module, *, channels_last: bool = True, mode: str | None = None) -> nn.Module:
    """``model`` with its forward compiled (in place; returned for chaining). Without a usable
    ``torch.compile`` it warns and returns ``model`` running eagerly."""
    current = model.__dict__.get("forward")
    if isinstance(current, CompiledForward):
        return model  # compiled once per module and process
    eager = model.forward
    compiled = None
    if not hasattr(torch, "compile"):
        warnings.warn("this torch has no torch.compile; running the eager model", RuntimeWarning, stacklevel=2)
    else:
        try:
            compiled = torch.compile(eager, mode=mode)
        except Exception as e:  # e.g. "Windows not yet supported", unsupported Python versions
            warnings.warn(
                f"torch.compile unavailable ({type(e).__name__}: {e}); running the eager model", RuntimeWarning, stacklevel=2
            )
    use_cl = bool(channels_last and has_conv_weights(model))
    if use_cl:
        to_channels_last(model)
    model.forward = CompiledForward(eager, compiled, use_cl)
    return model


def has_conv_weights(model: nn.Module) -> bool:
    """True when ``model`` has 4-D (2-D convolution) weights; parameters rather than module types,
    so TorchScript models, whose submodules are not ``nn.Conv2d``, count too."""
    return any(p.dim() == 4 for p in model.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store ``model``'s convolution weights in channels_last (in place; returned for chaining).

    Inputs stay NCHW: oneDNN then picks its NHWC kernels for the whole network. On this repo's
    2-core CPU (one thread) that alone makes eager forwards 1.1-2x faster (resnet20 at batch 100:
    fp32 146 -> 104 ms, bf16 67 -> 56 ms; the digits CNN in bf16 about 1.9x) and forward+backward
    1.0-1.3x, without torch.compile's minute of compiling; ``benchmarks/peers/bench_forward.py``. Results
    agree with the NCHW model to float rounding. A model without convolutions is left as it is.
    """
    if has_conv_weights(model):
        model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, compile: bool, channels_last: bool = True) -> nn.Module:
    """What the model builders call for their ``compile`` and ``channels_last`` options."""
    if compile:
        return compile_model(model, channels_last=channels_last)
    return to_channels_last(model) if channels_last else model


def is_compiled(model: nn.Module) -> bool:
    """True when ``model``'s forward is compiled and has not fallen back to eager."""
    fwd = model.__dict__.get("forward")
    return isinstance(fwd, CompiledForward) and fwd.compiled is not None
