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
