"""Candidate-forward precisions (``fp32``, ``bf16``) and whether bf16 is native on a device.

bfloat16 autocast speeds up score-only forwards on hardware that computes in bf16 (CPUs with
AVX-512 BF16 or AMX, recent GPUs) and slows them down where oneDNN emulates it: on an AVX2-only
CPU (an AMD EPYC) resnet20 forwards under bf16 autocast ran 5-11x slower than in fp32
(``python benchmarks/peers/bench_forward.py --threads 1 --fold --models resnet20``, batches 2-100).
Attacks that accept ``precision=bf16`` warn once per process on such a device, so that a config
written on one machine does not silently cost several times more on another.
"""

from __future__ import annotations

import functools
import warnings

import torch

from fragility.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def check_precision(value: str, key: str = "precision") -> str:
    if value not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


@functools.cache
def native_bf16(device_type: str) -> bool:
    """True where bf16 matrix products run in hardware: CUDA devices that report it, CPUs whose
    oneDNN has bf16 kernels (AVX-512 BF16 or AMX). Unknown device types count as native."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return True
    try:  # oneDNN's own test (private, but what it uses to pick its kernels)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return True  # nothing to go by: no warning


_warned: set[str] = set()


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """Warn once per process and device type when ``precision`` is bf16 on a device without native bf16."""
    if precision != "bf16" or device.type in _warned or native_bf16(device.type):
        return
    _warned.add(device.type)
    warnings.warn(
        f"bf16 candidate forwards: this {device.type.upper()} has no native bfloat16 (no AVX-512 BF16 or AMX), so bf16 "
        "forwards are emulated and several times slower than fp32 here; use precision=fp32 (AutoAttack: square_precision=fp32) on this machine",
        RuntimeWarning,
        stacklevel=3,
    )
