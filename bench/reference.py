"""The paper's reference pipeline (appendix D), written out for side-by-side benchmarks.

- `ReferenceKViews`: D.1/D.2, a Dataset whose __getitem__ applies the torchvision PIL transforms
  K times to one image, read by a torch DataLoader.
- `ReferenceRelationalReasoning`: D.3, pairs built by a Python loop over view pairs with
  `torch.cat` and `torch.roll`, the relation head on the full pair matrix, BCE, Adam.
- `reference_linear_eval`: the linear protocol run the plain way, the frozen backbone recomputing
  the features of every mini-batch in every epoch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)


class ReferenceKViews(torch.utils.data.Dataset):
    """The paper's MultiCIFAR10: K PIL augmentations of one image per __getitem__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, K: int) -> None:
        self.images, self.labels, self.K = images, labels, K
        jitter = T.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
        self.transform = T.Compose([
            T.RandomResizedCrop(size=32, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomHorizontalFlip(p=0.5), T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2),
            T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        pic = Image.fromarray(self.images[index])
        return [self.transform(pic.copy()) for _ in range(self.K)], int(self.labels[index])


def reference_loader(images: np.ndarray, labels: np.ndarray, K: int, M: int, workers: int):
    return torch.utils.data.DataLoader(ReferenceKViews(images, labels, K), batch_size=M, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers > 0 else None, drop_last=True)


class ReferenceRelationalReasoning(nn.Module):
    """Appendix D.3 (with the append of each pair inside the inner loop, as the method requires)."""

    def __init__(self, backbone: nn.Module, feature_size: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.relation_head = nn.Sequential(nn.Linear(feature_size * 2, 256), nn.BatchNorm1d(256), nn.LeakyReLU(),
                                           nn.Linear(256, 1))

    def aggregate(self, features: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        relation_pairs_list, targets_list = [], []
        size = features.shape[0] // K
        shifts_counter = 1
        for index_1 in range(0, size * K, size):
            for index_2 in range(index_1 + size, size * K, size):
                pos_pair = torch.cat([features[index_1:index_1 + size], features[index_2:index_2 + size]], 1)
                neg_pair = torch.cat([features[index_1:index_1 + size],
                                      torch.roll(features[index_2:index_2 + size], shifts=shifts_counter, dims=0)], 1)
                relation_pairs_list.append(pos_pair)
                relation_pairs_list.append(neg_pair)
                targets_list.append(torch.ones(size, dtype=torch.float32))
                targets_list.append(torch.zeros(size, dtype=torch.float32))
                shifts_counter += 1
                if shifts_counter >= size:
                    shifts_counter = 1  # avoid identity pairs
        return torch.cat(relation_pairs_list, 0), torch.cat(targets_list, 0)

    def step(self, data_augmented: list[torch.Tensor], optimizer: torch.optim.Optimizer, i: int):
        """One training step of D.3's loop body; returns (loss, accuracy) tensors."""
        K = len(data_augmented)
        x = torch.cat(data_augmented, 0)
        optimizer.zero_grad()
        features = self.backbone(x)
        relation_pairs, targets = self.aggregate(features, K)
        score = self.relation_head(relation_pairs).squeeze()
        loss = F.binary_cross_entropy_with_logits(score, targets)
        loss.backward()
        optimizer.step()
        predicted = torch.round(torch.sigmoid(score))
        correct = predicted.eq(targets.view_as(predicted)).sum()
        accuracy = 100.0 * correct / float(len(targets))
        if i % 100 == 0:
            print(f"reference step {i}: loss {loss.item():.5f}; accuracy {accuracy.item():.2f}%")
        return loss, accuracy


def reference_linear_eval(backbone: nn.Module, train_loader, test_loader, num_classes: int, feature_size: int,
                          epochs: int, lr: float = 1e-3, seed: int = 0) -> float:
    """Linear evaluation with the frozen backbone run on every mini-batch of every epoch."""
    torch.manual_seed(seed)
    backbone.eval()
    clf = nn.Linear(feature_size, num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in train_loader:
            with torch.no_grad():
                f = backbone(x)
            loss = F.cross_entropy(clf(f), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += int((clf(backbone(x)).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total
