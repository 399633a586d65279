"""model.compile: cached per module, falls back to eager with a warning, keeps the model's identity.

No test here runs Inductor for real (a first compile costs about a minute on a busy 2-core CPU); the
compiled speed is measured in benchmarks/peers/bench_sparse_rs.py. ``torch.compile`` is replaced by
stand-ins that behave like it: a wrapper that runs the function, or one that fails on the first call
as a missing C compiler does.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import compose, make_tiny

from fragility.models.compile import compile_model, is_compiled, maybe_compile


class FakeCompile:
    """Counts torch.compile calls; the 'compiled' function runs the original (or raises)."""

    def __init__(self, fail_on_call: bool = False) -> None:
        self.calls = 0
        self.runs = 0
        self.fail_on_call = fail_on_call

    def __call__(self, fn, mode=None):
        self.calls += 1

        def compiled(*a, **k):
            self.runs += 1
            if self.fail_on_call:
                raise RuntimeError("InvalidCxxCompiler: No working C compiler found\nmore detail")
            return fn(*a, **k)

        return compiled


def test_compiled_forward_is_used_and_cached(monkeypatch):
    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    model = make_tiny()
    x = torch.rand(3, 3, 8, 8)
    ref = model(x)
    keys = list(model.state_dict())
    out = compile_model(model)
    assert out is model and is_compiled(model)
    assert torch.allclose(model(x), ref, atol=1e-6)
    assert fake.runs == 1
    assert compile_model(model) is model and maybe_compile(model, True) is model
    assert fake.calls == 1  # compiled once per module and process
    assert list(model.state_dict()) == keys  # checkpoints keep their keys
    assert model.net.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fallback_when_compiling_fails_at_first_call(monkeypatch):
    monkeypatch.setattr(torch, "compile", FakeCompile(fail_on_call=True))
    model = make_tiny()
    x = torch.rand(2, 3, 8, 8)
    ref = model(x)
    compile_model(model)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*InvalidCxxCompiler"):
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert not is_compiled(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls run eagerly in silence
        assert torch.allclose(model(x), ref, atol=1e-6)


def test_fallback_when_compile_is_unavailable(monkeypatch):
    def unavailable(fn, mode=None):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = make_tiny()
    x = torch.rand(2, 3, 8, 8)
    ref = model(x)
    with pytest.warns(RuntimeWarning, match="unavailable"):
        compile_model(model)
    assert not is_compiled(model) and torch.allclose(model(x), ref, atol=1e-6)


def test_builders_take_the_option(monkeypatch):
    from fragility.models.cifar_resnet import build

    monkeypatch.setattr(torch, "compile", FakeCompile())
    assert not is_compiled(build(depth=8))
    model = build(depth=8, compile=True)
    assert is_compiled(model) and model.name == "cifar_resnet8@untrained"
    model(torch.rand(2, 3, 32, 32))  # channels_last input through the wrapper


def conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def test_channels_last_is_the_builders_default_and_changes_only_the_layout():
    from fragility.models.cifar_resnet import build

    torch.manual_seed(0)
    plain = build(depth=8, channels_last=False)
    fast = build(depth=8)
    fast.load_state_dict(plain.state_dict())  # same weights, copied into the channels_last tensors
    assert all(p.is_contiguous() for p in conv_weights(plain))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(fast))
    assert not is_compiled(fast)
    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    g_fast = torch.autograd.grad(fast(x).sum(), x)[0]
    g_plain = torch.autograd.grad(plain(x).sum(), x)[0]
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-5)  # attacks' input gradients agree
    assert list(fast.state_dict()) == list(plain.state_dict())  # checkpoints keep their keys


def test_channels_last_reaches_torchscript_models_and_leaves_dense_ones(tmp_path, digits_model):
    from fragility.models import generic
    from fragility.models.compile import to_channels_last

    torch.jit.script(digits_model.net).save(str(tmp_path / "d.ts"))
    ts = generic.build(str(tmp_path / "d.ts"), format="torchscript", input_size=[1, 8, 8], mean=[0.31], std=[0.38])
    assert conv_weights(ts) and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(ts))
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(ts(x), digits_model(x), rtol=1e-4, atol=1e-5)
    dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    assert to_channels_last(dense) is dense and dense[1].weight.is_contiguous()


def test_channels_last_is_a_config_option():
    from hydra.utils import instantiate

    for name in ("cifar_resnet", "digits_cnn", "checkpoint", "vgg16", "vgg19", "inception_v3"):
        assert compose([f"model={name}"]).model.channels_last is True
    model = instantiate(compose(["model=cifar_resnet", "model.depth=8", "model.channels_last=false"]).model)
    assert all(p.is_contiguous() for p in conv_weights(model))
