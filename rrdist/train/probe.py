"""Online linear probe: a linear classifier on the backbone's detached features, trained alongside
the pretraining with its own Adam (lr 1e-3), so its accuracy can be watched, and scheduled on,
every epoch without a separate evaluation. It never touches the backbone's gradients.

Its state is not checkpointed: after a resume it starts again (it only reports, it is not a result).
On N workers every worker trains its copy on the gathered features of the global batch, so the
copies stay identical and equal to the one a single process would train.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist.collective import gather_detached, gather_views, own_images


class OnlineProbe:
    def __init__(self, backbone: nn.Module, feature_size: int, num_classes: int, device: torch.device) -> None:
        self.features: torch.Tensor | None = None
        backbone.register_forward_hook(self._keep)
        self.classifier = nn.Linear(feature_size, num_classes).to(device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=1e-3)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # correct, counted

    def _keep(self, module, inputs, output) -> None:
        self.features = output

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

    def take_accuracy(self) -> torch.Tensor:
        """The epoch's [correct, counted] sums (on the device), reset for the next epoch."""
        sums = self.sums.clone()
        self.sums.zero_()
        return sums
