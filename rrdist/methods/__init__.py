"""Method registry: a new method is one file plus one line here."""

from __future__ import annotations

from rrdist.methods.deepcluster import DeepCluster
from rrdist.methods.infomax import DeepInfoMax
from rrdist.methods.random_weights import RandomWeights
from rrdist.methods.relational import RelationalReasoning
from rrdist.methods.rotation import RotationNet
from rrdist.methods.simclr import SimCLR
from rrdist.methods.supervised import Supervised

METHODS = {
    "relational": RelationalReasoning,
    "simclr": SimCLR,
    "rotation": RotationNet,
    "supervised": Supervised,
    "deepcluster": DeepCluster,
    "infomax": DeepInfoMax,
    "random": RandomWeights,
}


def build_method(cfg, num_classes: int = 10):
    from rrdist.errors import ConfigError
    from rrdist.models import build_backbone

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method '{cfg.method}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg, build_backbone(cfg.backbone), num_classes)
