"""Self-supervised relational reasoning (Patacchiola & Storkey, 2020).

For every unordered pair of views i < j of a mini-batch of M images, M positive pairs (view i
and view j of the same image) and M negative pairs (view i of image n with view j of another
image): P = M (K^2 - K) pairs per step, scored by a relation head and trained with the focal
BCE of eq. (7)-(8). Pairs are built with index tensors, in one shot.

On N workers the pairs are those of the global batch: every worker gathers all views' features,
draws the same negatives (the shared generator), and scores the pairs anchored at its own images;
its loss is its share's sum over the global pair count, times N, so that the workers' averaged
gradient is the single-process gradient (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist.collective import gather_detached, gather_views, own_images, world
from rrdist.config import PretrainConfig
from rrdist.losses import focal_bce_with_logits
from rrdist.methods.base import Method
from rrdist.models.heads import mlp_head, relation_head


def positive_pairs(M: int, K: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (left, right) into the view-major [K * M, D] features of all positive pairs.

    Ordered by view pair (i, j), i < j, then by image n: left = i*M + n, right = j*M + n.
    """
    i, j = torch.triu_indices(K, K, offset=1, device=device)
    n = torch.arange(M, device=device)
    left = (i[:, None] * M + n).reshape(-1)
    right = (j[:, None] * M + n).reshape(-1)
    return left, right


def negative_partners(right: torch.Tensor, M: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each positive (left, right), the same view of a different image, drawn uniformly.

    Algorithm 1's SHUFFLE: image n is paired with image (n + s) mod M, s uniform in 1..M-1,
    so it is never paired with itself.
    """
    shift = torch.randint(1, M, right.shape, device=right.device, generator=generator)
    n = right % M
    return right - n + (n + shift) % M


def aggregate(z: torch.Tensor, left: torch.Tensor, right: torch.Tensor, how: str) -> torch.Tensor:
    """The aggregation a(z_left, z_right) of eq. (5); `mean` is sum / 2."""
    a, b = z[left], z[right]
    if how == "cat":
        return torch.cat([a, b], dim=1)
    if how == "sum":
        return a + b
    if how == "mean":
        return (a + b) * 0.5
    if how == "max":
        return torch.maximum(a, b)
    raise ValueError(f"unknown aggregation {how}")


def relation_scores(head: nn.Sequential, z: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                    how: str) -> torch.Tensor:
    """head(aggregate(z, left, right, how)).squeeze(1), for a head that starts with a Linear layer.

    For the linear aggregations (cat, sum, mean) the [P, width] pair matrix is never built: the
    first layer maps each view once, W [a; b] + c = (W_a a + c) + W_b b, and its outputs are
    gathered per pair. At K = 32 that is 2,048 rows through the first layer instead of 63,488.
    """
    if how == "max":
        return head(aggregate(z, left, right, how)).squeeze(1)
    first = head[0]
    if how == "cat":
        d = z.shape[1]
        a = F.linear(z, first.weight[:, :d], first.bias)
        b = F.linear(z, first.weight[:, d:])
    elif how in ("sum", "mean"):
        b = F.linear(z, first.weight * 0.5 if how == "mean" else first.weight)
        a = b + first.bias
    else:
        raise ValueError(f"unknown aggregation {how}")
    hidden = a.index_select(0, left) + b.index_select(0, right)
    return head[1:](hidden).squeeze(1)


def labelled(indices: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Which training images keep their label in the semi-supervised variant: a fixed subset of
    about `fraction` of them, a function of (image index, seed) only, so every epoch and every
    worker agrees without storing a list (`fraction` 1 keeps all, 0 none)."""
    key = (indices + seed * 1000003) % 2147483648  # the seed moves the index before hashing
    mixed = key * 2654435761 % 4294967296  # Knuth's multiplicative hash (fits in int64)
    return mixed.to(torch.float64) / 4294967296.0 < fraction


def same_class_partners(right: torch.Tensor, classes: torch.Tensor, M: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-supervised positives (appendix A.7): for each positive (left, right) whose image n is
    labelled, the same view of another labelled image of n's class, drawn uniformly per pair.

    classes: [M], the class of each image of the mini-batch or -1 when unlabelled.
    Returns (which pairs got a partner [P] bool, the partner's row [P], valid where chosen).
    """
    n = right % M
    ok = (classes[:, None] == classes[None, :]) & (classes[:, None] >= 0) & ~torch.eye(M, dtype=torch.bool,
                                                                                      device=right.device)
    scores = torch.rand(len(right), M, device=right.device, generator=generator)
    scores = torch.where(ok[n], scores, torch.full_like(scores, -1.0))
    best, partner = scores.max(dim=1)
    return best >= 0, right - n + partner


class RelationalReasoning(Method):
    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int = 10) -> None:
        super().__init__(cfg, backbone, num_classes)
        width = backbone.feature_size * (2 if cfg.aggregation == "cat" else 1)
        if cfg.head == "relation":
            self.head = relation_head(width)
        elif cfg.head == "encoder_dot":  # Table 14 (b): each representation encoded again, then a dot product
            self.encoder = mlp_head(backbone.feature_size, backbone.feature_size)
        self._pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}

    @property
    def views_per_image(self) -> int:
        return self.cfg.K

    @property
    def needs_indices(self) -> bool:  # the semi-supervised variant needs to know which images are labelled
        return self.cfg.label_fraction > 0

    @property
    def needs_labels(self) -> bool:
        return self.cfg.label_fraction > 0

    def targets(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Labels of the labelled images, -1 for the others."""
        keep = labelled(indices, self.cfg.label_fraction, self.cfg.seed)
        return torch.where(keep, labels, torch.full_like(labels, -1))

    def pairs(self, M: int, K: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (M, K, str(device))  # positive indices depend only on (M, K): build them once
        if key not in self._pairs:
            self._pairs[key] = positive_pairs(M, K, device)
        return self._pairs[key]

    def share_rows(self, M: int, K: int, share: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Rows, among the positives then the negatives, of the pairs anchored at images share[0]..share[1]-1."""
        key = (M, K, share, str(device))
        if key not in self._pairs:
            per_view_pair = torch.arange(share[0], share[1], device=device)
            positives = (torch.arange(K * (K - 1) // 2, device=device)[:, None] * M + per_view_pair).reshape(-1)
            self._pairs[key] = torch.cat([positives, positives + M * K * (K - 1) // 2])
        return self._pairs[key]

    def relation_logits(self, z: torch.Tensor, M: int, K: int, classes: torch.Tensor | None = None,
                        share: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Scores and targets of every pair of the batch's view-major features z [K * M, D], and the
        number of pairs; with `classes` (semi-supervised) also positives of different images of one
        class, each matched by one more negative to keep the balance. With `share`, only the pairs
        anchored at those images are scored (the draws are still those of the whole batch)."""
        left, right = self.pairs(M, K, z.device)
        neg_right = negative_partners(right, M, self.generator)
        if classes is not None:
            chosen, partner = same_class_partners(right, classes, M, self.generator)
            extra_left = left[chosen]
            extra_neg = negative_partners(right[chosen], M, self.generator)
            left = torch.cat([left, extra_left])
            right = torch.cat([right, partner[chosen]])
            neg_right = torch.cat([neg_right, extra_neg])
        all_left = torch.cat([left, left])
        all_right = torch.cat([right, neg_right])
        targets = torch.cat([torch.ones_like(left, dtype=z.dtype), torch.zeros_like(left, dtype=z.dtype)])
        count = all_left.numel()
        if share is not None and share != (0, M):
            if classes is None:  # a fixed set of rows: no search, no wait for the device
                rows = self.share_rows(M, K, share, z.device)
            else:
                anchor = all_left % M
                rows = ((anchor >= share[0]) & (anchor < share[1])).nonzero().squeeze(1)
            all_left, all_right, targets = all_left[rows], all_right[rows], targets[rows]
        if self.cfg.head == "relation":
            logits = relation_scores(self.head, z, all_left, all_right, self.cfg.aggregation)
        else:  # Table 14 ablations: no aggregation, a dot product scores the pair
            logits = (z.index_select(0, all_left) * z.index_select(0, all_right)).sum(dim=1)
        return logits, targets, count

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        K = self.cfg.K
        z = self.backbone(views)
        if self.cfg.head == "encoder_dot":  # per view, before the gather: its BatchNorm sees each view once
            z = self.encoder(z)
        z = gather_views(z, K)  # the global batch's views; gradients return to their workers
        M = z.shape[0] // K
        classes = gather_detached(labels) if self.cfg.label_fraction > 0 else None
        logits, targets, count = self.relation_logits(z, M, K, classes, own_images(M))
        scale = world()[1] / count  # share sum over the global count, times N: DDP's mean is the global loss
        loss = focal_bce_with_logits(logits, targets, self.cfg.gamma, reduction="sum") * scale
        correct = ((logits > 0).to(targets.dtype) == targets).sum() * scale
        return loss, {"loss": loss.detach(), "pair_acc": correct.detach()}
