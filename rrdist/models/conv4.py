"""Conv-4 (appendix A.2): four conv-BN-ReLU-pool blocks of 8, 16, 32 and 64 maps, 64-d features."""

import torch
import torch.nn as nn


def _block(c_in: int, c_out: int, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), pool)


class Conv4(nn.Module):
    feature_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _block(3, 8, nn.AvgPool2d(2, 2)),
            _block(8, 16, nn.AvgPool2d(2, 2)),
            _block(16, 32, nn.AvgPool2d(2, 2)),
            _block(32, 64, nn.AdaptiveAvgPool2d(1)),
        )
        for m in self.modules():  # He (fan-out) init keeps the signal's scale through the blocks
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)
