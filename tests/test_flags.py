"""On/off settings are read strictly: a mistyped value is one clear ConfigError, never a silent True."""

from __future__ import annotations

import numpy as np
import pytest

from fragility.attacks.sparse_rs import SparseRS
from fragility.attacks.square import Square
from fragility.errors import ConfigError
from fragility.flags import parse_flag


@pytest.mark.parametrize(
    ("value", "want"),
    [(True, True), (False, False), (1, True), (0, False), ("false", False), ("True", True), (np.bool_(True), True)],
)
def test_flags_accept_booleans(value, want):
    assert parse_flag(value, "x") is want


@pytest.mark.parametrize("value", ["nope", "", 2, -1, 0.5, None, [True]])
def test_flags_refuse_anything_else(value):
    with pytest.raises(ConfigError, match="x must be true or false"):
        parse_flag(value, "x")


def test_attacks_refuse_a_mistyped_flag():
    with pytest.raises(ConfigError, match="fold_bn must be true or false, got 'nope'"):
        Square(fold_bn="nope")
    assert SparseRS(mode="pixels", universal="false").universal is False  # the word false is false, not truthy
    with pytest.raises(ConfigError, match="exhaustive must be true or false"):
        SparseRS(exhaustive="yes please")
