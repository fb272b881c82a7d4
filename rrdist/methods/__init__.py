"""Method registry: a new method is one file plus one line here."""

from __future__ import annotations

from rrdist.methods.relational import RelationalReasoning

METHODS = {
    "relational": RelationalReasoning,
}


def build_method(cfg):
    from rrdist.errors import ConfigError
    from rrdist.models import build_backbone

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method '{cfg.method}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg, build_backbone(cfg.backbone))
