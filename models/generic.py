"""A user's own model: a state dict for a known architecture, or a TorchScript file.

State dicts load with ``torch.load(weights_only=True)``. TorchScript archives are loaded with
``torch.jit.load``, which runs only TorchScript code stored in the archive (no Python pickle
of arbitrary objects); pass ``format=torchscript`` to opt in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fragility.errors import CheckpointError, ConfigError
from fragility.models.checkpoint import identify, load_weights, missing_file
from fragility.models.compile import maybe_compile
from fragility.models.wrapper import Classifier


def _arch(arch: str, num_classes: int):
    from fragility.models.cifar_resnet import CifarResNet
    from fragility.models.digits_cnn import DigitsCNN

    if arch.startswith("cifar_resnet"):
        return CifarResNet(int(arch.removeprefix("cifar_resnet") or 20), num_classes)
    if arch == "digits_cnn":
        return DigitsCNN(num_classes)
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models):
        kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    raise ConfigError(f"unknown architecture {arch!r}: use cifar_resnet<depth>, digits_cnn or a torchvision model name")


def build(
    path: str,
    arch: str | None = None,
    format: str = "state_dict",
    input_size: Sequence[int] = (3, 32, 32),
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    num_classes: int = 10,
    class_names: list[str] | None = None,
    name: str | None = None,
    compile: bool = False,
    channels_last: bool = True,
) -> Classifier:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(missing_file(p))
    if format == "torchscript":
        try:
            net = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # TorchScript raises a variety of internal errors for bad files
            raise CheckpointError(f"not a loadable TorchScript file: {p} ({type(e).__name__})") from None
    elif format == "state_dict":
        if not arch:
            raise ConfigError("model=checkpoint with a state dict needs model.arch (e.g. cifar_resnet20, resnet18)")
        net = load_weights(_arch(arch, int(num_classes)), p, normalization=(mean, std))
    else:
        raise ConfigError(f"unknown checkpoint format {format!r} (state_dict, torchscript)")
    names = list(class_names) if class_names else [str(i) for i in range(int(num_classes))]
    model = Classifier(net, mean=mean, std=std, input_size=input_size, class_names=names, name=name or arch or p.stem)
    return maybe_compile(identify(model, p), compile, channels_last)
