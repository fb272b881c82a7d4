"""Heads put on top of a backbone's features: every method's head has the relation head's shape."""

import torch.nn as nn


def mlp_head(in_features: int, out_features: int, hidden: int = 256) -> nn.Sequential:
    """Linear - BatchNorm - LeakyReLU - Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, out_features))


def relation_head(in_features: int, hidden: int = 256) -> nn.Sequential:
    """The relation module r_phi of section 4: the MLP to one logit."""
    return mlp_head(in_features, 1, hidden)
