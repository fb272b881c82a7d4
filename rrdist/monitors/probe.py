"""Online linear probe: a linear classifier on the backbone's detached features, trained alongside
the pretraining with its own Adam (`--probe-lr`, 1e-3), so its accuracy can be watched, and
scheduled on, every epoch without a separate evaluation. It never touches the backbone's gradients.

Its classifier and optimizer are saved with each checkpoint, so a resumed run continues the probe.
On N workers every worker trains its copy on the gathered features of the global batch, so the
copies stay identical and equal to the one a single process would train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist.collective import gather_detached, gather_views, own_images, world
from rrdist.config import need, setting
from rrdist.monitors.base import Monitor, MonitorContext, MonitorSettings


@dataclass
class ProbeSettings(MonitorSettings):
    online_probe: bool = setting(False, "train a linear classifier on detached features alongside; "
                                        "logs probe_acc per epoch")
    probe_lr: float = setting(1e-3, "learning rate of the online probe's Adam")

    def enabled(self) -> bool:
        return self.online_probe

    def validate(self, run) -> None:
        need(self.probe_lr == self.probe_lr and 0 < self.probe_lr < float("inf"),
             f"probe learning rate must be > 0 (got {self.probe_lr}): pass e.g. --probe-lr 1e-3")


class OnlineProbe(Monitor):
    Settings = ProbeSettings
    figures = ("probe_acc",)

    def __init__(self, settings: ProbeSettings, context: MonitorContext) -> None:
        super().__init__(settings, context)
        self.features: torch.Tensor | None = None
        backbone, device = context.backbone, context.device
        backbone.register_forward_hook(self._keep)
        self.classifier = nn.Linear(backbone.feature_size, context.data.num_classes).to(device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=settings.probe_lr)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # correct, counted

    def _keep(self, module, inputs, output) -> None:
        self.features = output

    def after_step(self, batch) -> None:
        self.step(batch.labels)

    def step(self, labels: torch.Tensor) -> None:
        """Train on the last backbone output; its rows are view-major copies of the batch, so the
        labels are tiled (view k of image n is row k * M + n). Label -1 (unlabelled) is skipped."""
        K = self.features.shape[0] // labels.shape[0]
        features = gather_views(self.features.detach().float(), K)
        labels = gather_detached(labels)
        targets = labels.repeat(K)
        with torch.enable_grad():
            logits = self.classifier(features)
            loss = F.cross_entropy(logits, targets, ignore_index=-1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        start, stop = own_images(labels.shape[0])
        image = torch.arange(targets.shape[0], device=targets.device) % labels.shape[0]
        known = (targets >= 0) & (image >= start) & (image < stop)  # each worker counts its own images
        self.sums[0] += ((logits.argmax(1) == targets) & known).sum()
        self.sums[1] += known.sum()

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """The epoch's accuracy over every worker's images; the sums start again for the next epoch."""
        sums = self.sums.clone()
        self.sums.zero_()
        if world()[1] > 1:
            torch.distributed.all_reduce(sums)
        correct, counted = sums.tolist()
        return {"probe_acc": correct / max(counted, 1.0)}

    def state_dict(self) -> dict[str, Any]:
        """The classifier (the same on every worker) and the epoch's counts of every worker together."""
        sums = self.sums.clone()
        if world()[1] > 1:
            torch.distributed.all_reduce(sums)
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sums": sums.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves the state to the classifier's device
        if world()[0] == 0:  # the saved counts are every worker's: one worker carries them on
            self.sums.copy_(state["sums"])
