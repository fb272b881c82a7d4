"""Random weights: the lower bound of Table 1 (appendix A.5).

The backbone as initialised (conv4: He fan-out; the ResNets: their constructors' defaults), with
the run's seed, is saved without any training and evaluated like every other method. It is the
same network a relational run with the same seed starts from (`evaluate linear --init random`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rrdist import paper
from rrdist.methods.base import Method, Settings


@dataclass
class RandomSettings(Settings):
    """Nothing to set: nothing is trained."""


class RandomWeights(Method):
    Settings = RandomSettings
    PAPER = paper.cells(
        Table_2=[(32.92, 1.88), (10.79, 0.59), (6.19, 0.13), (27.47, 0.83), (7.65, 0.44), (3.24, 0.43)],
        Table_5=[(10.79, 0.59), (19.94, 0.31), (7.65, 0.44), (16.56, 0.48)],
        Table_9=[(10.79, 0.59), (32.92, 1.89), (13.08, 0.91), (35.94, 1.39), (7.65, 0.44), (27.47, 0.83),
                 (1.88, 0.14), (13.53, 3.66)])
    metric_names = ()
    trainable = False

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        raise RuntimeError("the random-weights baseline is not trained")
