"""VGG-16/19 and Inception-v3 from torchvision, as [0, 1] classifiers with ImageNet normalization.

``pretrained=True`` uses torchvision's weights API (downloads once into torch's cache: users have
internet) and is named by them (``vgg16@IMAGENET1K_V1``); ``checkpoint=PATH`` loads a local state
dict with ``weights_only=True``; neither gives random weights, named ``vgg16@untrained`` (what the
tests use).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from fragility.errors import ConfigError
from fragility.models.checkpoint import identify, load_weights, untrained
from fragility.models.compile import maybe_compile
from fragility.models.imagenet_classes import imagenet_classes
from fragility.models.wrapper import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ARCHS = {
    # name: (constructor, weights enum name, input side)
    "vgg16": ("vgg16", "VGG16_Weights", 224),
    "vgg19": ("vgg19", "VGG19_Weights", 224),
    "inception_v3": ("inception_v3", "Inception_V3_Weights", 299),
}


def build(
    arch: str = "vgg16",
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int = 1000,
    class_names: list[str] | None = None,
    compile: bool = False,
    channels_last: bool = True,
) -> Classifier:
    if arch not in _ARCHS:
        raise ConfigError(f"unknown torchvision architecture {arch!r} (valid: {', '.join(_ARCHS)})")
    fn_name, weights_name, side = _ARCHS[arch]
    fn = getattr(torchvision.models, fn_name)
    kwargs: dict = {}
    if arch == "inception_v3":
        kwargs.update(aux_logits=pretrained, init_weights=not pretrained)
    if pretrained:
        if checkpoint:
            raise ConfigError("give either model.pretrained=true or model.checkpoint, not both")
        weights = getattr(torchvision.models, weights_name).DEFAULT
        net = fn(weights=weights, **kwargs)
        if arch == "inception_v3":
            net.aux_logits, net.AuxLogits = False, None
        checkpoint = _cached_weights(weights)
    else:
        net = fn(weights=None, num_classes=int(num_classes), **kwargs)
        if checkpoint:
            load_weights(net, checkpoint, normalization=(IMAGENET_MEAN, IMAGENET_STD))
    if class_names:
        names = list(class_names)
    elif int(num_classes) == 1000:
        names = imagenet_classes()
    else:
        names = [str(i) for i in range(int(num_classes))]
    model = Classifier(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(3, side, side), class_names=names, name=arch)
    if pretrained:
        model.name = f"{arch}@{weights.name}"  # vgg16@IMAGENET1K_V1: which of torchvision's weights
        identify(model, checkpoint, rename=False)  # the downloaded file's SHA-256 in the record
    elif checkpoint:
        identify(model, checkpoint)
    else:
        untrained(model, "neither model.pretrained=true nor model.checkpoint")
    return maybe_compile(model, compile, channels_last)


def _cached_weights(weights) -> str | None:
    """The file torchvision downloaded ``weights`` into (torch hub's cache), when it is there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return str(path) if path.is_file() else None
