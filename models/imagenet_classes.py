"""ImageNet class names, from torchvision's bundled weight metadata (no download needed)."""

from __future__ import annotations


def imagenet_classes() -> list[str]:
    from torchvision.models import VGG16_Weights

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
