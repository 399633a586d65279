"""CIFAR ResNets with "option A" shortcuts (He et al. 2016, section 4.2), any depth 6n+2.

Key names match the widely published pretrained CIFAR checkpoints (``conv1``, ``bn1``,
``layer1..3``, ``linear``), so those files load key for key.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import nn

from fragility.errors import CheckpointError, ConfigError
from fragility.models.checkpoint import (
    extract_state_dict,
    identify,
    load_checkpoint,
    load_weights,
    split_wrapper,
    untrained,
)
from fragility.models.compile import maybe_compile
from fragility.models.wrapper import Classifier

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Normalization used by the published option-A checkpoints (ImageNet statistics).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad channels (planes/4 per side)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._layer(16, n, 1)
        self.layer2 = self._layer(32, n, 2)
        self.layer3 = self._layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def build(
    depth: int = 20,
    checkpoint: str | None = None,
    num_classes: int = 10,
    class_names: list[str] | None = None,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
    compile: bool = False,
    channels_last: bool = True,
) -> Classifier:
    """A CIFAR ResNet-``depth`` wrapped as a [0, 1] classifier; weights from ``checkpoint``;
    ``compile``: forward through torch.compile (models/compile.py)."""
    net = CifarResNet(int(depth), int(num_classes))
    if checkpoint:
        try:
            load_weights(net, Path(checkpoint), normalization=(mean, std))
        except CheckpointError as e:
            hint = _settings_in_file(Path(checkpoint), int(depth), int(num_classes))
            if not hint:
                raise
            raise CheckpointError(f"{e}; the file loads with {hint}") from None
    names = list(class_names) if class_names else (CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(num_classes)])
    model = Classifier(net, mean=mean, std=std, input_size=(3, 32, 32), class_names=names, name=f"cifar_resnet{depth}")
    if not checkpoint:
        untrained(model, "no model.checkpoint")
    return maybe_compile(identify(model, checkpoint), compile, channels_last)


def _settings_in_file(path: Path, depth: int, num_classes: int) -> str:
    """The ``model.depth`` / ``model.num_classes`` overrides that a CIFAR ResNet checkpoint loads
    with, where they differ from the config's ("model.depth=32"); "" when no depth and class count
    would load it (another architecture)."""
    sd, _ = split_wrapper(extract_state_dict(load_checkpoint(path), path))
    blocks = {k.split(".")[1] for k in sd if k.startswith("layer1.") and k.count(".") >= 2}
    head = sd.get("linear.weight")
    if not blocks or not all(b.isdigit() for b in blocks) or head is None or head.dim() != 2:
        return ""
    found = {"model.depth": 6 * len(blocks) + 2, "model.num_classes": int(head.shape[0])}
    own = CifarResNet(found["model.depth"], found["model.num_classes"]).state_dict()
    fits = all(k in own and tuple(v.shape) == tuple(own[k].shape) for k, v in sd.items())
    if not fits or any(k not in sd for k in own if not k.endswith("num_batches_tracked")):
        return ""
    if found["model.depth"] == depth:
        return ""  # only the class count differs: load_weights says so already
    want = {"model.depth": depth, "model.num_classes": num_classes}
    return " ".join(f"{k}={v}" for k, v in found.items() if v != want[k])
