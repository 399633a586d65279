"""Per-sample random streams that do not depend on how samples are batched.

A global generator hands a sample different noise when it sits at another position or in another
batch, so "attacking a batch equals attacking each image alone" would fail for every randomized
attack. Here each sample owns a counter-based stream (splitmix64 over ``(key, call, element)``),
computed with vectorized integer tensor ops: no Python loop over images. Keys default to a hash
of the image's content and the seed, so the same image gets the same stream in any batch.
Written here because torch exposes no keyed counter-based generator; it buys batch invariance,
which tests check.
"""

from __future__ import annotations

import math

import torch


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def content_keys(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One int64 key per image from its 8-bit-quantized pixels and ``seed`` (exact integer hash)."""
    q = torch.round(images.detach().flatten(1).clamp(0, 1) * 255).long()
    w = mix64(torch.arange(q.shape[1], device=q.device, dtype=torch.long) + 1)
    return mix64((q * w).sum(1) + mix64(torch.tensor(int(seed), device=q.device, dtype=torch.long)))


class SampleRNG:
    """Random numbers for a batch, one independent stream per sample key.

    Every call advances one shared call counter, so a sample sees the same numbers whether it is
    drawn alone or among others, as long as the sequence of calls is the same.
    """

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys.long()
        self.calls = 0

    def _bits(self, shape: tuple[int, ...], idx: torch.Tensor | None) -> torch.Tensor:
        keys = self.keys if idx is None else self.keys[idx]
        m = math.prod(shape)
        self.calls += 1
        call = mix64(torch.tensor(self.calls, device=keys.device, dtype=torch.long))
        ctr = torch.arange(m, device=keys.device, dtype=torch.long)
        z = mix64(mix64(keys[:, None] ^ call) + ctr[None, :])
        return z.view(len(keys), *shape)

    def uniform(self, *shape: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Floats in [0, 1), shape ``(n, *shape)``; ``idx`` picks a subset of the samples."""
        return _srl(self._bits(shape, idx), 40).float() / float(1 << 24)

    def normal(self, *shape: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        u1 = self.uniform(*shape, idx=idx).clamp_min(1e-7)
        u2 = self.uniform(*shape, idx=idx)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    def randint(self, high: int, *shape: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        return (self.uniform(*shape, idx=idx) * high).long().clamp_max(high - 1)
