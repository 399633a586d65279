"""On/off settings read strictly: ``bool("false")`` is True in Python, so a mistyped value
(``attack.fold_bn=nope``) would otherwise switch a feature on without a word."""

from __future__ import annotations

from fragility.errors import ConfigError

_WORDS = {"true": True, "false": False}


def parse_flag(value: object, name: str) -> bool:
    """``True``/``False`` (also numpy's), 0/1, or the words true/false -> bool; anything else is a ConfigError."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _WORDS:
            return _WORDS[word]
    elif type(value).__name__ in ("bool", "bool_") or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}")
