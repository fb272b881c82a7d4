"""Supervised training: the upper bound of Table 1 (appendix A.5).

Labels and cross-entropy on a linear classifier over the backbone's features; random crop (4
pixels of padding) and horizontal flip; SGD with lr 0.1 and momentum 0.9, the lr divided by 10 at
50% and 75% of the epochs. The appendix names no weight decay; 5e-4 is the usual CIFAR setting
of the ResNet papers it follows. Mini-batch 128 in the paper (`--batch-size 128`). The lr is the
method's own: `--lr` sets Adam's rate of the self-supervised methods and is not used here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist.config import PretrainConfig
from rrdist.methods.base import Method


def step_lr(base: float, epoch: int, epochs: int) -> float:
    """base, divided by 10 at 50% and again at 75% of the epochs (epoch counts from 0)."""
    milestones = (int(0.5 * epochs), int(0.75 * epochs))
    return base * 0.1 ** sum(epoch >= m for m in milestones)


class Supervised(Method):
    augmentation = "crop_flip"
    needs_labels = True
    lr = 0.1

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int = 10) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.classifier = nn.Linear(backbone.feature_size, num_classes)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer, images=None) -> None:
        for group in optimizer.param_groups:
            group["lr"] = step_lr(self.lr, epoch, self.cfg.epochs)

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        logits = self.classifier(self.backbone(views))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "pair_acc": acc.detach()}
