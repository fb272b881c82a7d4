"""Random weights: the lower bound of Table 1 (appendix A.5).

The backbone as initialised (conv4: He fan-out; the ResNets: their constructors' defaults), with
the run's seed, is saved without any training and evaluated like every other method. It is the
same network a relational run with the same seed starts from (`evaluate linear --init random`).
"""

from __future__ import annotations

import torch

from rrdist.methods.base import Method


class RandomWeights(Method):
    trainable = False

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        raise RuntimeError("the random-weights baseline is not trained")
