"""SimCLR (Chen et al., 2020) as the paper's baseline (appendix A.5).

Two views per image with the same augmentations as relational reasoning, a projection head of
the relation head's shape (Linear 256 - BatchNorm - LeakyReLU - Linear; 64 outputs, the
backbone's feature size, since the appendix keeps the shape and SimCLR's own paper projects to a
space smaller than the features), NT-Xent with temperature 0.5 (`--temperature`), Adam 1e-3. The appendix uses
mini-batches of 128 images (`--batch-size 128`): 2 * 128 views, about 6.5e4 pairs.

Across workers the negatives come from the global batch: every worker gathers all projections
with a gather whose backward sends each worker the gradient of every loss term that used its
projections, so data-parallel training computes the gradient of the single-process loss on the
concatenated batch (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import gather, row_counts, share_factor, world
from rrdist.config import PretrainConfig, need, setting
from rrdist.losses import nt_xent
from rrdist.methods.base import AdamSettings, Method
from rrdist.models.heads import mlp_head

PROJECTION = 64  # output size of the projection head


@dataclass
class SimCLRSettings(AdamSettings):
    temperature: float = setting(0.5, "temperature of NT-Xent")

    def validate(self, run: PretrainConfig) -> None:
        super().validate(run)
        need(self.temperature > 0, f"temperature must be > 0 (got {self.temperature}): pass e.g. --temperature 0.5")


PAPER = paper.cells(
    Table_2=[(60.43, 0.26), (30.45, 0.41), (20.90, 0.15), (77.02, 0.64), (42.13, 0.35), (25.79, 0.40)],
    Table_5=[(30.45, 0.41), (37.72, 0.14), (42.13, 0.35), (51.88, 0.48)],
    Table_9=[(29.20, 0.08), (54.73, 0.60), (34.46, 0.78), (61.34, 0.24), (36.21, 0.16), (65.59, 0.76),
             (36.79, 0.45), (66.19, 0.80)])


class SimCLR(Method):
    Settings = SimCLRSettings
    PAPER = PAPER
    metric_names = ("loss", "positive_acc")  # positive_acc: anchors whose other view scores highest

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.head = mlp_head(backbone.feature_size, PROJECTION)

    @property
    def views_per_image(self) -> int:
        return 2

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        z = F.normalize(self.head(self.backbone(views)), dim=1)
        counts = row_counts(z.shape[0])
        offset = sum(counts[:world()[0]])  # where this worker's rows start among everyone's
        loss, acc = nt_xent(z, gather(z, counts), offset, self.settings.temperature)
        share = share_factor(z.shape[0])  # uneven shares: the workers' average is the global mean
        loss, acc = loss * share, acc * share
        return loss, {"loss": loss.detach(), "positive_acc": acc.detach()}
