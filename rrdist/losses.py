"""Loss functions: pure, stateless, each checked against a written-out reference in the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
                          reduction: str = "mean") -> torch.Tensor:
    """Equations (7)-(8) of the paper, on logits.

    L = 1/P * sum_i -w_i [t_i log y_i + (1 - t_i) log(1 - y_i)],  y_i = sigmoid(logit_i),
    w_i = 1/2 * [(1 - t_i) y_i + t_i (1 - y_i)]^gamma.

    The weight is optional in eq. (7): gamma = 0 means no weight, i.e. plain binary cross-entropy.
    (With the weight kept at gamma = 0 the loss would be BCE / 2, which Adam's updates do not see.)
    `reduction="sum"` gives P times that: a worker's share of a loss normalised over all workers' pairs.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        y = torch.sigmoid(logits)
        bce = 0.5 * ((1.0 - targets) * y + targets * (1.0 - y)).pow(gamma) * bce
    return bce.sum() if reduction == "sum" else bce.mean()


def nt_xent(z: torch.Tensor, z_all: torch.Tensor, offset: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent of the local anchors z [2M, D] (view 0 of M images, then view 1) against z_all.

    z_all holds every worker's [2M, D] block in turn; this worker's block starts at row `offset`
    (z_all = z, offset 0 on one process). Each anchor's positive is the other view of its image;
    every other row is a negative. Returns (mean loss over the local anchors, share of anchors
    whose positive scores highest).
    """
    n = z.shape[0]
    logits = z @ z_all.t() / temperature
    rows = torch.arange(n, device=z.device)
    logits[rows, offset + rows] = float("-inf")  # an anchor is not its own candidate
    positive = offset + (rows + n // 2) % n
    loss = F.cross_entropy(logits, positive)
    acc = (logits.argmax(dim=1) == positive).float().mean()
    return loss, acc


def local_jsd(global_emb: torch.Tensor, local_emb: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Deep InfoMax's local loss, -(Jensen-Shannon MI estimate): global_emb [N, E] of the whole batch,
    local_emb [n, E, P] (P positions) of images offset .. offset + n - 1 of it (all N by default).

    Scores s[a, b, p] = global_emb[a] . local_emb[b, :, p]; positives a == offset + b, negatives
    the others: mean softplus(-s) over the batch's N P positives + mean softplus(s) over its
    N (N - 1) P negatives, of which these images' columns contribute their share.
    """
    N, n, P = global_emb.shape[0], local_emb.shape[0], local_emb.shape[2]
    scores = torch.einsum("ae,bep->abp", global_emb, local_emb)
    same = torch.zeros(N, n, dtype=torch.bool, device=scores.device)
    same[offset + torch.arange(n, device=scores.device), torch.arange(n, device=scores.device)] = True
    same = same[:, :, None].expand_as(scores)
    positive = F.softplus(-scores[same]).sum() / (N * P)
    negative = F.softplus(scores[~same]).sum() / (N * (N - 1) * P)
    return positive + negative
