"""Supervised training: the upper bound of Table 1 (appendix A.5).

Labels and cross-entropy on a linear classifier over the backbone's features; random crop (4
pixels of padding) and horizontal flip; SGD with lr 0.1 and momentum 0.9, the lr divided by 10 at
50% and 75% of the epochs. The appendix names no weight decay; 5e-4 is the usual CIFAR setting
of the ResNet papers it follows (`--weight-decay`). Mini-batch 128 in the paper (`--batch-size 128`).
`--lr` sets SGD's initial rate here (0.1 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import share_factor
from rrdist.config import PretrainConfig, need, setting
from rrdist.methods.base import Method, Settings, check_lr
from rrdist.schedules import step_lr

PAPER = paper.cells(
    Table_2=[(80.46, 0.39), (49.29, 0.85), (36.47, 0.36), (90.87, 0.41), (65.32, 0.22), (50.09, 0.32)],
    Table_5=[(49.29, 0.85), (59.91, 0.62), (65.32, 0.22), (76.35, 0.57)],
    Table_9=[(32.06, 0.63), (64.00, 1.07), (36.83, 0.36), (71.20, 0.18), (33.98, 0.70), (71.01, 0.44),
             (33.92, 0.50), (71.97, 0.17)])


@dataclass
class SupervisedSettings(Settings):
    lr: float = setting(0.1, "initial learning rate of SGD (divided by 10 at 50% and 75% of the epochs)")
    weight_decay: float = setting(5e-4, "SGD weight decay")

    def validate(self, run: PretrainConfig) -> None:
        check_lr(self.lr)
        need(self.weight_decay >= 0, f"weight decay must be >= 0 (got {self.weight_decay})")


class Supervised(Method):
    Settings = SupervisedSettings
    PAPER = PAPER
    metric_names = ("loss", "train_acc")  # train_acc: training views classified right
    augmentation = "crop_flip"
    needs_labels = True

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.classifier = nn.Linear(backbone.feature_size, num_classes)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.settings.lr, momentum=0.9,
                               weight_decay=self.settings.weight_decay)

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer, images=None, resumed: bool = False) -> None:
        for group in optimizer.param_groups:
            group["lr"] = step_lr(self.settings.lr, epoch, self.cfg.epochs)

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        logits = self.classifier(self.backbone(views))
        share = share_factor(labels.shape[0])  # uneven shares: the workers' average is the global mean
        loss = F.cross_entropy(logits, labels) * share
        acc = (logits.argmax(dim=1) == labels).float().mean() * share
        return loss, {"loss": loss.detach(), "train_acc": acc.detach()}
