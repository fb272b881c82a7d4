"""Backbones (each maps [N, 3, H, W] to [N, feature_size]) and heads."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from rrdist.errors import ConfigError
from rrdist.models.conv4 import Conv4
from rrdist.models.resnet_cifar import resnet8, resnet32, resnet56
from rrdist.models.resnet_large import resnet18, resnet34, resnet50

BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "conv4": Conv4,
    "resnet8": resnet8,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet34": resnet34,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_backbone(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]()
