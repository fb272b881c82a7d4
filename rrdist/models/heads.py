"""Heads put on top of a backbone's features."""

import torch.nn as nn


def relation_head(in_features: int, hidden: int = 256) -> nn.Sequential:
    """The relation module r_phi: Linear - BatchNorm - LeakyReLU - Linear to one logit (section 4)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, 1))
