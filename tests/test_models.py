"""Model builders and safe checkpoint loading."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fragility.errors import CheckpointError, ConfigError
from fragility.models import cifar_resnet, digits_cnn, generic, torchvision_models
from fragility.models.checkpoint import extract_state_dict, load_checkpoint


@pytest.mark.parametrize("depth, params", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnet_any_depth(depth, params):
    net = cifar_resnet.CifarResNet(depth)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) / params < 0.03
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet_roundtrip_with_module_prefix_and_nesting(tmp_path):
    src = cifar_resnet.CifarResNet(44)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "best_prec1": 90.0}, tmp_path / "r44.th")
    model = cifar_resnet.build(depth=44, checkpoint=str(tmp_path / "r44.th"))
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor(cifar_resnet.CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(cifar_resnet.CIFAR_STD).view(1, 3, 1, 1)
    src.eval()
    # the model stores its convolution weights channels_last (model.channels_last, the default): same
    # weights, different summation order, so float rounding (random-init logits are large)
    torch.testing.assert_close(model(x), src((x - mean) / std), rtol=1e-4, atol=1e-4)
    digest = hashlib.sha256((tmp_path / "r44.th").read_bytes()).hexdigest()
    assert model.name == f"cifar_resnet44@{digest[:8]}" and model.weights_sha256 == digest  # identity by weights
    assert model.class_names[9] == "truck"


def test_a_whole_classifier_state_dict_loads_behind_its_own_normalization(tmp_path):
    """``torch.save(model.state_dict())`` of a fragility Classifier: the network under ``net.``, its
    normalization beside it. It loads, and only behind the normalization it was saved with."""
    src = cifar_resnet.build(depth=32, channels_last=False)
    torch.save(src.state_dict(), tmp_path / "whole.pt")
    model = cifar_resnet.build(depth=32, checkpoint=str(tmp_path / "whole.pt"))
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), src.net.state_dict().values(), strict=True))
    with pytest.raises(
        CheckpointError, match=r"saved behind normalization mean=\[0.485.*model config has mean=\[0.5, 0.5, 0.5\]"
    ):
        cifar_resnet.build(depth=32, checkpoint=str(tmp_path / "whole.pt"), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(CheckpointError, match="saved behind normalization"):  # model=checkpoint's default is no normalization
        generic.build(path=str(tmp_path / "whole.pt"), arch="cifar_resnet32")
    mean, std = list(cifar_resnet.CIFAR_MEAN), list(cifar_resnet.CIFAR_STD)
    assert generic.build(path=str(tmp_path / "whole.pt"), arch="cifar_resnet32", mean=mean, std=std).num_classes == 10


def test_shared_checkpoints_load(shared_dir):
    for depth, name in [(20, "resnet20-12fca82f.th"), (32, "resnet32-d509ac18.th")]:
        m = cifar_resnet.build(depth=depth, checkpoint=str(shared_dir / "models" / "cifar10" / name))
        assert m.input_size == (3, 32, 32)


def test_mismatch_reports_what_differs(tmp_path):
    torch.save(cifar_resnet.CifarResNet(20).state_dict(), tmp_path / "r20.th")
    with pytest.raises(CheckpointError, match="does not match.*missing"):
        cifar_resnet.build(depth=32, checkpoint=str(tmp_path / "r20.th"))
    with pytest.raises(ConfigError, match="6n\\+2"):
        cifar_resnet.CifarResNet(21)


def test_a_cifar_resnet_checkpoint_of_another_depth_names_the_settings_it_loads_with(tmp_path):
    torch.save({"state_dict": cifar_resnet.CifarResNet(32, 100).state_dict()}, tmp_path / "r32.th")
    with pytest.raises(CheckpointError, match=r"unexpected .*; the file loads with model\.depth=32 model\.num_classes=100$"):
        cifar_resnet.build(depth=20, checkpoint=str(tmp_path / "r32.th"))
    with pytest.raises(CheckpointError, match=r"another shape .*; its last layer has 100 outputs: set model\.num_classes=100$"):
        cifar_resnet.build(depth=32, checkpoint=str(tmp_path / "r32.th"))
    assert cifar_resnet.build(depth=32, num_classes=100, checkpoint=str(tmp_path / "r32.th")).num_classes == 100
    other = cifar_resnet.CifarResNet(32).state_dict()
    other["layer1.0.shortcut.0.weight"] = torch.zeros(16, 16, 1, 1)  # an option-B shortcut: no depth loads it
    torch.save(other, tmp_path / "b.th")
    with pytest.raises(CheckpointError) as err:
        cifar_resnet.build(depth=20, checkpoint=str(tmp_path / "b.th"))
    assert "loads with" not in str(err.value)


def test_a_checkpoint_fine_tuned_for_other_classes_names_model_num_classes(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(
        CheckpointError, match=r"fc\.weight: file \(2, 512\).*; its last layer has 2 outputs: set model\.num_classes=2$"
    ):
        generic.build(path=str(tmp_path / "r18.pt"), arch="resnet18", input_size=[3, 32, 32], num_classes=10)
    assert generic.build(path=str(tmp_path / "r18.pt"), arch="resnet18", input_size=[3, 32, 32], num_classes=2).num_classes == 2
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # another shape, but not the head: no class-count hint
    torch.save(sd, tmp_path / "grey.pt")
    with pytest.raises(CheckpointError) as err:
        generic.build(path=str(tmp_path / "grey.pt"), arch="resnet18", input_size=[3, 32, 32], num_classes=10)
    assert "num_classes" not in str(err.value)


class _Thing:
    pass


def test_unsafe_and_corrupt_files_refused(tmp_path):
    torch.save({"state_dict": _Thing()}, tmp_path / "obj.th")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(tmp_path / "obj.th")
    (tmp_path / "junk.th").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.th")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.th")
    torch.save([1, 2, 3], tmp_path / "list.th")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_checkpoint(tmp_path / "list.th")
    with pytest.raises(CheckpointError, match="no tensors"):
        extract_state_dict({"epoch": 3})


def test_digits_cnn_accuracy_and_cache(digits_model, digits_test):
    with torch.no_grad():
        acc = (digits_model(digits_test.images()).argmax(1) == digits_test.y).float().mean()
    assert acc >= 0.95
    cache = digits_cnn.cache_dir() / f"digits_cnn-v{digits_cnn.RECIPE_VERSION}.pt"
    assert cache.is_file()
    again = digits_cnn.build()
    for a, b in zip(again.state_dict().values(), digits_model.state_dict().values()):
        assert torch.equal(a, b)


def test_digits_cnn_corrupt_cache_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGILITY_CACHE", str(tmp_path))
    path = tmp_path / f"digits_cnn-v{digits_cnn.RECIPE_VERSION}.pt"
    path.write_bytes(b"corrupt")
    monkeypatch.setattr(digits_cnn, "train_digits_cnn", lambda: digits_cnn.DigitsCNN())
    digits_cnn.build()
    assert load_checkpoint(path)  # rewritten as a valid state dict


@pytest.mark.parametrize("arch, side", [("vgg16", 224), ("inception_v3", 299)])
def test_torchvision_models_random_init(arch, side):
    m = torchvision_models.build(arch=arch)
    assert m.input_size == (3, side, side) and m.num_classes == 1000
    assert m.class_index("toaster") == 859
    with torch.no_grad():
        assert m(torch.rand(1, 3, side, side)).shape == (1, 1000)


def test_random_weights_are_named_untrained_and_pretrained_ones_by_their_weights(tmp_path, monkeypatch):
    """A model built without weights never shares the trained network's leaderboard name: it is
    ``@untrained`` with the setting that would give it weights; torchvision's pretrained weights
    name the row by which weights they are, and the downloaded file's SHA-256 is recorded."""
    r = cifar_resnet.build(depth=8)
    assert r.name == "cifar_resnet8@untrained" and r.untrained == "no model.checkpoint"
    v = torchvision_models.build(arch="vgg16", num_classes=3)
    assert v.name == "vgg16@untrained" and "model.pretrained=true" in v.untrained
    torch.save(cifar_resnet.CifarResNet(8).state_dict(), tmp_path / "r8.pt")
    loaded = cifar_resnet.build(depth=8, checkpoint=str(tmp_path / "r8.pt"))
    assert loaded.untrained == "" and "@untrained" not in loaded.name
    # pretrained, offline: a stand-in network and a file where torch hub keeps the download
    weights = torchvision_models.torchvision.models.VGG16_Weights.DEFAULT
    monkeypatch.setattr(torchvision_models.torchvision.models, "vgg16", lambda weights, **kw: torch.nn.Flatten())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    file = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    file.write_bytes(b"downloaded weights")
    p = torchvision_models.build(arch="vgg16", pretrained=True)
    assert p.name == f"vgg16@{weights.name}" and p.untrained == ""
    assert p.weights_sha256 == hashlib.sha256(b"downloaded weights").hexdigest()


def test_torchvision_local_checkpoint(tmp_path):
    net = torchvision_models.build(arch="vgg16", num_classes=3).net
    torch.save(net.state_dict(), tmp_path / "vgg.pt")
    m = torchvision_models.build(arch="vgg16", num_classes=3, checkpoint=str(tmp_path / "vgg.pt"))
    assert torch.equal(m.net.classifier[-1].weight, net.classifier[-1].weight)


def test_generic_state_dict_and_torchscript(tmp_path, digits_model):
    torch.save(digits_model.net.state_dict(), tmp_path / "d.pt")
    kw = dict(input_size=[1, 8, 8], mean=[0.31], std=[0.38], num_classes=10)
    m = generic.build(str(tmp_path / "d.pt"), arch="digits_cnn", **kw)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(m(x), digits_model(x))
    torch.jit.script(digits_model.net).save(str(tmp_path / "d.ts"))
    ts = generic.build(str(tmp_path / "d.ts"), format="torchscript", **kw)
    torch.testing.assert_close(ts(x), digits_model(x))
    with pytest.raises(ConfigError, match="needs model.arch"):
        generic.build(str(tmp_path / "d.pt"), **kw)
    with pytest.raises(ConfigError, match="unknown architecture"):
        generic.build(str(tmp_path / "d.pt"), arch="nonet", **kw)
