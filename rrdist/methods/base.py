"""What a method is: its settings, the modules it trains, the views it needs, and its training step.

A method is an nn.Module so that DDP can wrap it whole: `forward(views, labels)` is the
training step and returns (loss, metrics): `metric_names` in order, detached tensors that stay
on the device until the worker loop reads them once per epoch.

A step on N workers must equal a step on one worker holding the whole global batch: each worker's
`forward` sees its share (M / N images in rank order, or shares differing by one image where N
does not divide M; `rrdist.collective`), and its loss is scaled so that the mean of the workers'
gradients (what DDP applies) is the single-process gradient: a mean over the worker's rows times
`share_factor` (1 for equal shares), or a sum over the global count times N. Losses that relate
images to each other gather what they need. Metrics are scaled alike.

A new method is one file: a `Settings` dataclass (its own flags, defaults, help and checks, and
`lr`, its optimiser's rate), a `Method` subclass, and its rows of the paper's tables (`PAPER`);
plus one line in the registry (`rrdist/methods/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from rrdist import paper
from rrdist.config import PretrainConfig, setting


@dataclass
class Settings:
    """A method's own settings: flags of `rrdist pretrain`, keys of config files and search spaces."""

    def validate(self, run: PretrainConfig) -> None:
        """Refuse bad values with a one-line ConfigError that names the fix."""


@dataclass
class AdamSettings(Settings):
    lr: float = setting(1e-3, "learning rate of the method's optimiser")

    def validate(self, run: PretrainConfig) -> None:
        check_lr(self.lr)


def check_lr(lr: float) -> None:
    from rrdist.config import need

    need(lr == lr and 0 < lr < float("inf"), f"learning rate must be > 0 (got {lr}): pass e.g. --lr 1e-3")


class Method(nn.Module):
    Settings = AdamSettings
    PAPER: dict = {}  # its rows of the paper's tables (rrdist.paper.cells)
    metric_names: tuple[str, ...] = ("loss",)  # what forward's metrics hold, logged per epoch
    backbone: nn.Module
    augmentation = "kview"  # the views it trains on: "kview" (appendix A.3) or "crop_flip" (padded crop + flip)
    trainable = True  # False: the initial backbone is saved without training (random weights)
    needs_indices = False  # True: each step's targets come from `targets(labels, image indices)`
    needs_labels = False  # True: trains on the labelled training split (STL-10 pretrains on its unlabeled one)
    # Draws every worker shares in a step (negatives, prior samples): the worker loop reseeds it
    # each step with the same seed on every rank; None outside training (then the global RNG).
    generator: torch.Generator | None = None

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.settings = cfg.settings
        self.backbone = backbone
        self.num_classes = num_classes

    @property
    def views_per_image(self) -> int:
        """How many augmented views of each image a training step takes."""
        return 1

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.settings.lr)

    @classmethod
    def check_data(cls, cfg: PretrainConfig, manifest: dict) -> None:
        """Refuse, before anything starts, data this method cannot train on (raise a DataError)."""

    @classmethod
    def paper_accuracy(cls, cfg: PretrainConfig, evaluate: str) -> tuple[float, float, str] | None:
        """(mean, std, table) the paper reports for this run's linear evaluation on `evaluate`, or None."""
        return paper.lookup(cls.PAPER, cfg.backbone, cfg.dataset, evaluate)

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer, images=None, resumed: bool = False) -> None:
        """Called before every epoch (counted from 0), also after a resume: schedules live here.

        `images` gives access to the un-augmented training images (`TrainingImages`). `resumed`: the
        epoch continues from a checkpoint inside it, so what the method set up at its start (kept
        in the method's state) is already there and must not be made again.
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
