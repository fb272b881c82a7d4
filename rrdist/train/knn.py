"""Online kNN monitor: a weighted k-nearest-neighbour classifier (Wu et al., 2018) over the current
backbone's features of a fixed labelled subset of the training images, scoring held-out images
every few epochs (`--knn-every N`): `knn_acc`, logged to TensorBoard and reported to Tune, so a
scheduler can act on it.

It reads the backbone in eval mode without gradients and draws no random numbers, so the training
it watches is unchanged (tested). On N workers each worker embeds its share of both subsets; the
bank is gathered and the correct counts are summed, so every worker reports the same figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rrdist.collective import gather_detached, world

BANK, QUERIES = 5000, 2000  # images of the labelled bank and of the held-out queries (at most)
NEIGHBOURS, TEMPERATURE = 200, 0.1


def weighted_knn(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, classes: int,
                 k: int = NEIGHBOURS, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Predicted class [Q] of each query: its k most cosine-similar bank rows vote for their class
    with weight exp(similarity / temperature)."""
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).t()
    top, rows = sims.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], classes, dtype=sims.dtype, device=sims.device)
    votes.scatter_add_(1, bank_labels[rows], (top / temperature).exp())
    return votes.argmax(dim=1)


def subset(count: int, size: int, seed: int, workers: int) -> np.ndarray:
    """A fixed random subset of positions, sorted, its size a multiple of the worker count."""
    size = min(size, count) // workers * workers
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


class KnnMonitor:
    def __init__(self, data: dict[str, Any], device: torch.device, seed: int = 0) -> None:
        from rrdist.data.loader import image_loader, split_size

        rank, workers = world()
        self.data, self.device, self.classes = data, device, int(data["num_classes"])
        self.loaders = []
        for path, size, salt in ((data["labelled"], BANK, 0), (data["test"], QUERIES, 1)):
            chosen = subset(split_size(Path(path)), size, seed * 2 + salt, workers)
            share = chosen.reshape(-1, workers)[:, rank]  # interleaved: equal shares
            self.loaders.append(image_loader(path, 512, train=False, device=device, drop_last=False, subset=share))

    def accuracy(self, backbone: torch.nn.Module) -> float:
        from rrdist.data.features import embed

        bank, bank_labels = embed(backbone, self.loaders[0], self.data, self.device, "kNN bank")
        queries, labels = embed(backbone, self.loaders[1], self.data, self.device, "kNN queries")
        bank, bank_labels = gather_detached(bank), gather_detached(bank_labels)
        correct = (weighted_knn(bank, bank_labels, queries, self.classes) == labels).sum().double()
        counts = torch.stack([correct, torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device)])
        if world()[1] > 1:
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1].clamp(min=1))
