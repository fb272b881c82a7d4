"""What a method is: the modules it trains, the views it needs, and its training step.

A method is an nn.Module so that DDP can wrap it whole: `forward(views, labels)` is the
training step and returns (loss, metrics), metrics being detached tensors that stay on the
device until the worker loop reads them once per epoch.

A step on N workers must equal a step on one worker holding the whole global batch: each worker's
`forward` sees its share (M / N images, in rank order; `rrdist.collective`), and its loss is
scaled so that the mean of the workers' gradients (what DDP applies) is the single-process
gradient. Per-image losses averaged over equal shares satisfy this as they are; losses that relate
images to each other gather what they need.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rrdist.config import PretrainConfig


class Method(nn.Module):
    backbone: nn.Module
    augmentation = "kview"  # the views it trains on: "kview" (appendix A.3) or "crop_flip" (padded crop + flip)
    trainable = True  # False: the initial backbone is saved without training (random weights)
    needs_indices = False  # True: each step's targets come from `targets(labels, image indices)`
    needs_labels = False  # True: trains on the labelled training split (STL-10 pretrains on its unlabeled one)
    # Draws every worker shares in a step (negatives, prior samples): the worker loop reseeds it
    # each step with the same seed on every rank; None outside training (then the global RNG).
    generator: torch.Generator | None = None

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.num_classes = num_classes

    @property
    def views_per_image(self) -> int:
        """How many augmented views of each image a training step takes."""
        return 1

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr)

    @classmethod
    def check_data(cls, cfg: PretrainConfig, manifest: dict) -> None:
        """Refuse, before anything starts, data this method cannot train on (raise a DataError)."""

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer, images=None) -> None:
        """Called before every epoch (counted from 0), also after a resume: schedules live here.

        `images` gives access to the un-augmented training images (`TrainingImages`).
        """

    def targets(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The step's targets from the batch's labels and training-image indices (`needs_indices`)."""
        return labels

    def epoch_metrics(self) -> dict[str, float]:
        """Extra figures logged with each epoch's metrics."""
        return {}

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """views: [K * M, C, H, W], view-major; labels: [M] (unused by self-supervised methods)."""
        raise NotImplementedError
