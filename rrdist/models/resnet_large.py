"""torchvision's ImageNet ResNets (a 7x7 stride-2 stem and a max-pool, then four stages), without
their classifier: ResNet-34 of the paper's larger experiments, ResNet-18 and ResNet-50 of the
ImageNet-scale SSL benchmarks."""

import torch.nn as nn

FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}  # the width of the last stage's output


def _torchvision(name: str) -> nn.Module:
    import torchvision.models

    net = getattr(torchvision.models, name)(weights=None)
    net.fc = nn.Identity()
    net.feature_size = FEATURES[name]
    return net


def resnet18() -> nn.Module:
    return _torchvision("resnet18")


def resnet34() -> nn.Module:
    return _torchvision("resnet34")


def resnet50() -> nn.Module:
    return _torchvision("resnet50")
