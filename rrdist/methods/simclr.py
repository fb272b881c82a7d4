"""SimCLR (Chen et al., 2020) as the paper's baseline (appendix A.5).

Two views per image with the same augmentations as relational reasoning, a projection head of
the relation head's shape (Linear 256 - BatchNorm - LeakyReLU - Linear; 64 outputs, the
backbone's feature size, since the appendix keeps the shape and SimCLR's own paper projects to a
space smaller than the features), NT-Xent with temperature 0.5, Adam 1e-3. The appendix uses
mini-batches of 128 images (`--batch-size 128`): 2 * 128 views, about 6.5e4 pairs.

Across workers the negatives come from the global batch: every worker gathers all projections
with a gather whose backward sends each worker the gradient of every loss term that used its
projections, so data-parallel training computes the gradient of the single-process loss on the
concatenated batch (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist.collective import gather, world
from rrdist.config import PretrainConfig
from rrdist.methods.base import Method
from rrdist.models.heads import mlp_head

PROJECTION = 64  # output size of the projection head


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All workers' rows, worker by worker, and the row where this worker's own rows start."""
    return gather(z), world()[0] * z.shape[0]


def nt_xent(z: torch.Tensor, z_all: torch.Tensor, offset: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of the local anchors z [2M, D] (view 0 of M images, then view 1) against z_all.

    z_all holds every worker's [2M, D] block in turn; this worker's block starts at row `offset`.
    Each anchor's positive is the other view of its image; every other row is a negative.
    Returns (mean loss over the local anchors, share of anchors whose positive scores highest).
    """
    n = z.shape[0]
    logits = z @ z_all.t() / temperature
    rows = torch.arange(n, device=z.device)
    logits[rows, offset + rows] = float("-inf")  # an anchor is not its own candidate
    positive = offset + (rows + n // 2) % n
    loss = F.cross_entropy(logits, positive)
    acc = (logits.argmax(dim=1) == positive).float().mean()
    return loss, acc


class SimCLR(Method):
    temperature = 0.5

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int = 10) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.head = mlp_head(backbone.feature_size, PROJECTION)

    @property
    def views_per_image(self) -> int:
        return 2

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        z = F.normalize(self.head(self.backbone(views)), dim=1)
        z_all, offset = gather_with_grad(z)
        loss, acc = nt_xent(z, z_all, offset, self.temperature)
        return loss, {"loss": loss.detach(), "pair_acc": acc.detach()}
