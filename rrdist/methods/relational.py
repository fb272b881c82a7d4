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

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import gather_detached, gather_views, own_images, world
from rrdist.config import PretrainConfig, need, setting
from rrdist.data.keyed import key, uniform
from rrdist.losses import focal_bce_with_logits
from rrdist.methods.base import AdamSettings, Method
from rrdist.models.heads import mlp_head, relation_head

AGGREGATIONS = ("cat", "sum", "mean", "max")
HEADS = ("relation", "dot", "encoder_dot")
LABELS_STREAM = 0x1ABE1  # keys the semi-supervised label draws apart from the views' draws


@dataclass
class RelationalSettings(AdamSettings):
    K: int = setting(32, "augmented views per image")
    gamma: float = setting(2.0, "focal factor of the loss; 0 is plain BCE")
    aggregation: str = setting("cat", "how a pair's two features are joined: " + ", ".join(AGGREGATIONS))
    head: str = setting("relation", "relation, or the Table 14 ablations dot (dot product of the features) "
                                    "and encoder_dot")
    label_fraction: float = setting(0.0, "semi-supervised variant: share of training images whose label "
                                         "adds same-class positives")

    def validate(self, run: PretrainConfig) -> None:
        super().validate(run)
        need(self.K >= 2, f"K must be at least 2 (got {self.K}): relational reasoning pairs views of one image, "
                          f"pass --K 2 or more")
        need(math.isfinite(self.gamma) and self.gamma >= 0,
             f"gamma must be >= 0 (got {self.gamma}): pass --gamma 0 for plain BCE or e.g. --gamma 2")
        need(self.aggregation in AGGREGATIONS,
             f"unknown aggregation '{self.aggregation}': choose one of {', '.join(AGGREGATIONS)}")
        need(self.head in HEADS, f"unknown head '{self.head}': choose one of {', '.join(HEADS)}")
        need(0.0 <= self.label_fraction <= 1.0,
             f"label fraction must be in [0, 1] (got {self.label_fraction}): pass e.g. --label-fraction 0.1")


TABLE10_K = (2, 4, 8, 16, 32)
PAPER = {
    **paper.cells(
        Table_2=[(61.03, 0.23), (33.38, 1.02), (22.31, 0.19), (74.99, 0.07), (46.17, 0.16), (30.54, 0.42)],
        Table_5=[(33.38, 1.02), (40.86, 1.03), (46.17, 0.17), (52.44, 0.47)],
        Table_9=[(31.84, 0.23), (57.30, 0.26), (36.07, 0.35), (63.24, 0.52), (41.50, 0.35), (67.81, 0.42),
                 (42.19, 0.28), (68.66, 0.21)]),
    # Table 10: K views per image; Conv-4, CIFAR-10, 100 epochs (validation split).
    **{("Table 10", "conv4", "cifar10", "cifar10", ("K", K)): cell
       for K, cell in zip(TABLE10_K, [(55.31, 0.58), (58.05, 0.67), (59.24, 0.51), (60.26, 0.59), (60.33, 0.36)])},
    # Tables 11-12: share of labelled images (appendix A.7); ResNet-32, 200 epochs.
    **{(table, "resnet32", d, d, ("labels", f)): cell
       for table, d, row in (("Table 11", "cifar10", [(76.55, 0.27), (80.14, 0.35), (85.30, 0.28), (89.35, 0.11),
                                                      (90.66, 0.23)]),
                             ("Table 12", "cifar100", [(46.10, 0.29), (49.55, 0.36), (54.44, 0.58), (58.52, 0.70),
                                                       (58.96, 0.28)]))
       for f, cell in zip((0.01, 0.1, 0.25, 0.5, 1.0), row)},
    # Table 13: the aggregation; Conv-4 (validation split).
    **{("Table 13", "conv4", d, d, ("aggregation", a)): cell
       for a, row in (("sum", [(57.60, 0.23), (29.45, 0.69)]), ("mean", [(57.77, 0.74), (29.15, 0.80)]),
                      ("max", [(56.45, 1.15), (26.58, 1.26)]), ("cat", [(60.81, 0.25), (32.36, 0.73)]))
       for d, cell in zip(("cifar10", "cifar100"), row)},
    # Table 14: the head; ResNet-32, 200 epochs: linear, transfer 10->100 and 100->10, grain.
    **{("Table 14", "resnet32", p, e, ("head", h)): cell
       for h, row in (("dot", [(72.74, 0.22), (28.77, 0.44), (18.19, 0.10), (51.9, 0.50), (45.05, 1.07)]),
                      ("encoder_dot", [(59.44, 0.59), (29.91, 1.28), (28.29, 0.90), (53.65, 0.85), (36.94, 1.30)]))
       for (p, e), cell in zip((("cifar10", "cifar10"), ("cifar100", "cifar100"), ("cifar10", "cifar100"),
                                 ("cifar100", "cifar10"), ("cifar100", "cifar100-20")), row)},
}


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
    return uniform(key(seed, LABELS_STREAM), indices, 1)[:, 0] < fraction


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
    Settings = RelationalSettings
    PAPER = PAPER
    metric_names = ("loss", "pair_acc")  # pair_acc: pairs classified right (positive or negative)

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        width = backbone.feature_size * (2 if self.settings.aggregation == "cat" else 1)
        if self.settings.head == "relation":
            self.head = relation_head(width)
        elif self.settings.head == "encoder_dot":  # Table 14 (b): each representation encoded again, then a dot product
            self.encoder = mlp_head(backbone.feature_size, backbone.feature_size)
        self._pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}

    @classmethod
    def paper_accuracy(cls, cfg: PretrainConfig, evaluate: str) -> tuple[float, float, str] | None:
        """The paper's cell for these settings: its numbers are for gamma = 2; a variant (labels, head,
        aggregation) has its own table at K = 32; Table 10 holds K at 100 epochs."""
        s, where = cfg.settings, (cfg.backbone, cfg.dataset, evaluate)
        if s.gamma != 2:
            return None
        # One variant at a time against the paper's defaults, each in its own table, at K = 32.
        variants = [(("labels", s.label_fraction), ("Table 11", "Table 12")), (("head", s.head), ("Table 14",)),
                    (("aggregation", s.aggregation), ("Table 13",))]
        changed = [(v, tables) for v, tables in variants if v not in (("labels", 0.0), ("head", "relation"),
                                                                     ("aggregation", "cat"))]
        if len(changed) > 1 or (changed and s.K != 32):
            return None
        if changed:
            variant, tables = changed[0]
            return paper.lookup(cls.PAPER, *where, (variant,), tables)
        if where == ("conv4", "cifar10", "cifar10") and s.K in TABLE10_K and (cfg.epochs < 200 or s.K != 32):
            return paper.lookup(cls.PAPER, *where, (("K", s.K),), ("Table 10",))
        paper_k = 16 if (cfg.backbone, cfg.dataset) == ("resnet32", "tiny-imagenet") else 32
        return paper.lookup(cls.PAPER, *where) if s.K == paper_k else None

    @property
    def views_per_image(self) -> int:
        return self.settings.K

    @property
    def needs_indices(self) -> bool:  # the semi-supervised variant needs to know which images are labelled
        return self.settings.label_fraction > 0

    @property
    def needs_labels(self) -> bool:
        return self.settings.label_fraction > 0

    def targets(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Labels of the labelled images, -1 for the others."""
        keep = labelled(indices, self.settings.label_fraction, self.cfg.seed)
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
        if self.settings.head == "relation":
            logits = relation_scores(self.head, z, all_left, all_right, self.settings.aggregation)
        else:  # Table 14 ablations: no aggregation, a dot product scores the pair
            logits = (z.index_select(0, all_left) * z.index_select(0, all_right)).sum(dim=1)
        return logits, targets, count

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        K = self.settings.K
        z = self.backbone(views)
        if self.settings.head == "encoder_dot":  # per view, before the gather: its BatchNorm sees each view once
            z = self.encoder(z)
        z = gather_views(z, K)  # the global batch's views; gradients return to their workers
        M = z.shape[0] // K
        classes = gather_detached(labels) if self.settings.label_fraction > 0 else None
        logits, targets, count = self.relation_logits(z, M, K, classes, own_images(M))
        scale = world()[1] / count  # share sum over the global count, times N: DDP's mean is the global loss
        loss = focal_bce_with_logits(logits, targets, self.settings.gamma, reduction="sum") * scale
        correct = ((logits > 0).to(targets.dtype) == targets).sum() * scale
        return loss, {"loss": loss.detach(), "pair_acc": correct.detach()}
