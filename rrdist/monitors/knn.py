"""Online kNN monitor: a weighted k-nearest-neighbour classifier (Wu et al., 2018) over the current
backbone's features of a fixed labelled subset of the training images, scoring held-out images
every few epochs (`--knn-every N`): `knn_acc`, logged to TensorBoard and reported to Tune, so a
scheduler can act on it.

It reads the backbone in eval mode without gradients and draws no random numbers, so the training
it watches is unchanged (tested). On N workers each worker embeds its share of both subsets (the same
subsets for any N); the bank is gathered and the correct counts are summed, so every worker reports the same figure.
It keeps no state between epochs: nothing to checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rrdist.collective import gather_detached, world
from rrdist.data.loader import shares, split_size
from rrdist.config import need, setting
from rrdist.errors import ConfigError
from rrdist.monitors.base import Monitor, MonitorContext, MonitorSettings


@dataclass
class KnnSettings(MonitorSettings):
    knn_every: int = setting(0, "every N epochs, score held-out images by a weighted kNN over a labelled subset's "
                                "features (knn_acc; a scheduler can use it); 0: never")
    knn_k: int = setting(200, "neighbours that vote in the kNN monitor")
    knn_temperature: float = setting(0.1, "temperature of the kNN monitor's vote weights exp(similarity / t)")
    knn_bank: int = setting(5000, "labelled training images in the kNN monitor's bank (at most)")
    knn_queries: int = setting(2000, "held-out images the kNN monitor scores (at most)")

    def enabled(self) -> bool:
        return self.knn_every > 0

    def validate(self, run) -> None:
        need(self.knn_every >= 0, f"kNN interval must be >= 0 epochs (got {self.knn_every}): pass --knn-every 0 "
                                  f"to turn it off")
        need(self.knn_k >= 1, f"kNN neighbours must be at least 1 (got {self.knn_k}): pass e.g. --knn-k 200")
        need(self.knn_temperature == self.knn_temperature and self.knn_temperature > 0,
             f"kNN temperature must be > 0 (got {self.knn_temperature}): pass e.g. --knn-temperature 0.1")
        need(self.knn_bank >= 1 and self.knn_queries >= 1,
             f"the kNN bank and queries need at least 1 image (got {self.knn_bank} and {self.knn_queries})")

    def check_data(self, data) -> None:
        if self.enabled() and data.test is None:
            raise ConfigError(f"--knn-every scores held-out images, and {data.dataset} has no test split: "
                              f"drop --knn-every")


def weighted_knn(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, classes: int,
                 k: int = 200, temperature: float = 0.1) -> torch.Tensor:
    """Predicted class [Q] of each query: its k most cosine-similar bank rows vote for their class
    with weight exp(similarity / temperature)."""
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).t()
    top, rows = sims.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], classes, dtype=sims.dtype, device=sims.device)
    votes.scatter_add_(1, bank_labels[rows], (top / temperature).exp())
    return votes.argmax(dim=1)


def subset(count: int, size: int, seed: int) -> np.ndarray:
    """A fixed random subset of positions, sorted; the same for any worker count."""
    return np.sort(np.random.default_rng(seed).choice(count, min(size, count), replace=False))


class KnnMonitor(Monitor):
    Settings = KnnSettings
    figures = ("knn_acc",)

    def __init__(self, settings: KnnSettings, context: MonitorContext) -> None:
        from rrdist.data.augment import KViewAugment

        super().__init__(settings, context)
        rank, workers = world()
        data = context.data
        self.prep = KViewAugment(data.image_size, data.mean, data.std)
        self.subsets, counts = [], []
        for path, size, salt in ((data.labelled, settings.knn_bank, 0), (data.test, settings.knn_queries, 1)):
            chosen = subset(split_size(Path(path)), size, context.seed * 2 + salt)
            counts.append(shares(len(chosen), workers))  # contiguous shares: the gathered bank is one process's
            start = sum(counts[-1][:rank])
            self.subsets.append((path, chosen[start:start + counts[-1][rank]]))
        self.bank_counts = counts[0]  # every worker's bank rows, for the gather
        self.loaders: list | None = None  # built at the first scoring: a start's first step does not wait for them

    def built_loaders(self) -> list:
        """This worker's loaders of its bank and query images (built once, at the first scoring)."""
        if self.loaders is None:
            from rrdist.data.loader import image_loader

            decoding = self.context.data.decoding()
            self.loaders = [image_loader(path, 512, train=False, device=self.context.device, drop_last=False,
                                         subset=chosen, **decoding) for path, chosen in self.subsets]
        return self.loaders

    def epoch_end(self, epoch: int) -> dict[str, float]:
        if epoch % self.settings.knn_every and epoch != self.context.epochs:
            return {}
        return {"knn_acc": self.accuracy(self.context.backbone)}

    def accuracy(self, backbone: torch.nn.Module) -> float:
        from rrdist.data.features import embed

        device, s = self.context.device, self.settings
        bank_images, query_images = self.built_loaders()
        bank, bank_labels = embed(backbone, bank_images, self.prep, device, "kNN bank")
        queries, labels = embed(backbone, query_images, self.prep, device, "kNN queries")
        bank, bank_labels = gather_detached(bank, self.bank_counts), gather_detached(bank_labels, self.bank_counts)
        predicted = weighted_knn(bank, bank_labels, queries, self.context.data.num_classes, s.knn_k,
                                 s.knn_temperature)
        correct = (predicted == labels).sum().double()
        counts = torch.stack([correct, torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
        if world()[1] > 1:
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1].clamp(min=1))
