"""Budgets written as numbers or fractions (``8/255``), parsed without ``eval``."""

from __future__ import annotations

import math
from fractions import Fraction

from fragility.errors import ConfigError


def parse_number(value: float | int | str, name: str = "value") -> float:
    """``0.03``, ``8/255``, ``"8/255"`` or ``"1e-3"`` -> float. Anything else is a ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(Fraction(value.strip().replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{name} must be a number or a fraction like 8/255, got {value!r}") from None
    else:
        raise ConfigError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return out


def parse_budget(value: float | int | str, name: str = "eps") -> float:
    """A non-negative budget."""
    out = parse_number(value, name)
    if out < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return out


def format_number(x: float) -> str:
    """Render 0.0313725... as ``8/255`` when it is a k/255 fraction below 1 (an 8-bit pixel
    budget) with no short decimal spelling, else compactly (``0.2``, ``1``, ``0.5``, ``1e+09``):
    ``0.2`` is also ``51/255``, and the user who typed it reads it as ``0.2``."""
    if x == 0:
        return "0"
    if abs(x * 1000 - round(x * 1000)) < 1e-9:  # at most three decimals: the decimal is the short form
        return f"{x:g}"
    k = x * 255
    if 0 < round(k) < 255 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{x:g}"
