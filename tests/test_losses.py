"""The focal BCE against a written-out reference of eq. (7)-(8)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rrdist.losses import focal_bce_with_logits


def reference_focal(logits, targets, gamma):
    """Eq. (7)-(8), one pair at a time, in double precision."""
    total = 0.0
    for logit, t in zip(logits.tolist(), targets.tolist()):
        y = 1.0 / (1.0 + math.exp(-logit))
        w = 0.5 * ((1 - t) * y + t * (1 - y)) ** gamma if gamma > 0 else 1.0
        total += -w * (t * math.log(y) + (1 - t) * math.log(1 - y))
    return total / len(logits)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_focal_matches_reference(gamma):
    torch.manual_seed(int(gamma * 10))
    logits = torch.randn(257, dtype=torch.float64) * 3
    targets = (torch.rand(257) < 0.5).double()
    got = focal_bce_with_logits(logits, targets, gamma)
    assert got.item() == pytest.approx(reference_focal(logits, targets, gamma), rel=1e-10)


def test_gamma_zero_is_plain_bce():
    logits = torch.randn(1000) * 4
    targets = (torch.rand(1000) < 0.5).float()
    got = focal_bce_with_logits(logits, targets, 0.0)
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(logits, targets))
    assert torch.allclose(got, torch.nn.BCEWithLogitsLoss()(logits, targets))


def test_focal_downweights_easy_pairs():
    targets = torch.tensor([1.0, 1.0])
    easy, hard = torch.tensor([6.0]), torch.tensor([-1.0])
    ratio_focal = focal_bce_with_logits(easy, targets[:1], 2.0) / focal_bce_with_logits(hard, targets[:1], 2.0)
    ratio_bce = focal_bce_with_logits(easy, targets[:1], 0.0) / focal_bce_with_logits(hard, targets[:1], 0.0)
    assert ratio_focal < ratio_bce / 10


def test_focal_gradient_matches_finite_differences():
    logits = torch.randn(20, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(20) < 0.5).double()
    assert torch.autograd.gradcheck(lambda x: focal_bce_with_logits(x, targets, 2.0), (logits,))
