"""ResNet-34 from torchvision (four stages, 512-d features), without its classifier."""

import torch.nn as nn


def resnet34() -> nn.Module:
    from torchvision.models import resnet34 as tv_resnet34

    net = tv_resnet34(weights=None)
    net.fc = nn.Identity()
    net.feature_size = 512
    return net
