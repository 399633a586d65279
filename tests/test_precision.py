"""bf16 candidate forwards warn once on a device that only emulates bfloat16."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fragility.precision as precision
from fragility.attacks.onepixel import OnePixel
from fragility.attacks.square import Square
from fragility.errors import ConfigError


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    monkeypatch.setattr(precision, "_warned", set())


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_bf16_warns_once_per_process_where_it_is_emulated(emulated):
    x, y = torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        Square(eps=0.1, queries=5, precision="bf16")(Tiny().eval(), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second attack, bf16 or not, says nothing more
        OnePixel(popsize=4, maxiter=1, precision="bf16")(Tiny().eval(), x, y)
        Square(eps=0.1, queries=5)(Tiny().eval(), x, y)


def test_fp32_and_native_bf16_never_warn(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())
    x, y = torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
        OnePixel(popsize=4, maxiter=1)(Tiny().eval(), x, y)  # fp32 on an emulating CPU: fine
        monkeypatch.setattr(precision, "native_bf16", lambda device_type: True)
        OnePixel(popsize=4, maxiter=1, precision="bf16")(Tiny().eval(), x, y)


def test_native_bf16_answers_for_this_machine():
    assert isinstance(precision.native_bf16("cpu"), bool)
    assert precision.native_bf16("cuda") == bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        Square(precision="fp16")
    with pytest.raises(ConfigError, match="square_precision must be one of"):
        from fragility.attacks.autoattack import AutoAttack

        AutoAttack(square_precision="half")
