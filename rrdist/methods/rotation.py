"""RotationNet (Gidaris et al., 2018) as the paper's baseline (appendix A.5).

Each image of the mini-batch (128 in the paper: `--batch-size 128`), randomly cropped (4 pixels
of padding) and flipped, is shown at 0, 90, 180 and 270 degrees (a batch of 4 x 128), and a
4-way classifier predicts the rotation; cross-entropy, Adam 1e-3. The classifier has the
relation head's shape (Linear 256 - BatchNorm - LeakyReLU - Linear), as the paper gives every
self-supervised baseline the same head size; Gidaris et al. put a small classifier on the
features too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import share_factor
from rrdist.config import PretrainConfig
from rrdist.methods.base import Method
from rrdist.models.heads import mlp_head

ROTATIONS = 4
PAPER = paper.cells(
    Table_2=[(56.73, 1.71), (27.45, 0.80), (18.40, 0.95), (62.00, 0.79), (29.02, 0.18), (14.73, 0.48)],
    Table_5=[(27.45, 0.80), (35.49, 0.17), (29.02, 0.19), (40.45, 0.39)],
    Table_9=[(26.06, 0.09), (51.86, 0.36), (31.60, 0.54), (56.85, 0.13), (27.02, 0.20), (52.22, 0.70),
             (27.25, 0.62), (51.82, 0.58)])


def rotations(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, C, S, S] -> the four rotations [4M, C, S, S] (block r turned r * 90 degrees counter-clockwise)
    and their labels [4M]."""
    turned = torch.cat([torch.rot90(views, r, dims=(2, 3)) for r in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=views.device).repeat_interleave(views.shape[0])
    return turned, labels


class RotationNet(Method):
    PAPER = PAPER
    metric_names = ("loss", "rotation_acc")  # rotation_acc: rotations predicted right
    augmentation = "crop_flip"

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.head = mlp_head(backbone.feature_size, ROTATIONS)

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        turned, targets = rotations(views)
        logits = self.head(self.backbone(turned.contiguous(memory_format=torch.channels_last)))
        share = share_factor(targets.shape[0])  # uneven shares: the workers' average is the global mean
        loss = F.cross_entropy(logits, targets) * share
        acc = (logits.argmax(dim=1) == targets).float().mean() * share
        return loss, {"loss": loss.detach(), "rotation_acc": acc.detach()}
