"""Method registry: a new method is one file plus one line here.

Also where a run configuration is composed: the shared settings (`rrdist.config`), the chosen
method's own (its `Settings`) and every monitor's (`rrdist.monitors`), from the flat form of
config files, flags and sweeps.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from rrdist.config import COMMAND_LINE, PretrainConfig, as_mapping, expand_workers, parse_yaml, read_settings, typed_values
from rrdist.errors import ConfigError
from rrdist.methods.deepcluster import DeepCluster
from rrdist.methods.infomax import DeepInfoMax
from rrdist.methods.random_weights import RandomWeights
from rrdist.methods.relational import RelationalReasoning
from rrdist.methods.rotation import RotationNet
from rrdist.methods.simclr import SimCLR
from rrdist.methods.supervised import Supervised
from rrdist.monitors import MONITORS, monitor_keys

METHODS = {
    "relational": RelationalReasoning,
    "simclr": SimCLR,
    "rotation": RotationNet,
    "supervised": Supervised,
    "deepcluster": DeepCluster,
    "infomax": DeepInfoMax,
    "random": RandomWeights,
}


def default_method() -> str:
    """The method of a run that names none: the registry's first."""
    return next(iter(METHODS))


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def setting_owners() -> dict[str, list[str]]:
    """Each method setting's name -> the methods that have it, in registry order."""
    owners: dict[str, list[str]] = {}
    for name, method in METHODS.items():
        for f in fields(method.Settings):
            owners.setdefault(f.name, []).append(name)
    return owners


def all_keys() -> list[str]:
    """Every key a configuration may hold: the shared settings, every method's, then every monitor's."""
    return [f.name for f in PretrainConfig.shared_fields()] + list(setting_owners()) + list(monitor_keys())


def config_from_dict(data: dict[str, Any], source: str = "configuration") -> PretrainConfig:
    """A run configuration from its flat form; a key of no method, or of another method, is refused."""
    shared = {f.name for f in PretrainConfig.shared_fields()}
    data = expand_workers(data, None if source == COMMAND_LINE else source)
    method = str(data.get("method") or default_method())
    settings_type = method_class(method).Settings
    own = {f.name for f in fields(settings_type)}
    owners, watched = setting_owners(), monitor_keys()
    for key in data:
        if key in shared or key in own or key in watched:
            continue
        if key in owners:
            raise ConfigError(f"'{key}' in {source} is a setting of {' and '.join(owners[key])}, not of {method}: "
                              f"drop it, or choose --method {owners[key][0]}")
        raise ConfigError(f"unknown key '{key}' in {source}: valid keys are {', '.join(all_keys())}")
    settings = settings_type(**typed_values(settings_type, {k: v for k, v in data.items() if k in own}, source))
    values = typed_values(PretrainConfig, {k: v for k, v in data.items() if k in shared}, source)
    monitors = {}
    for name, monitor in MONITORS.items():
        kind = monitor.Settings
        mine = {k: v for k, v in data.items() if watched.get(k) == name}
        monitors[name] = kind(**typed_values(kind, mine, source))
    return PretrainConfig(**{**values, "method": method}, settings=settings, monitors=monitors)


def make_config(**values: Any) -> PretrainConfig:
    return config_from_dict(values)


def config_from_yaml_text(text: str, source: str | Path) -> PretrainConfig:
    return config_from_dict(as_mapping(parse_yaml(text, source), source), source=str(source))


def config_from_yaml(path: str | Path) -> PretrainConfig:
    return config_from_dict(read_settings(path), source=str(path))


def build_method(cfg: PretrainConfig, num_classes: int):
    from rrdist.models import build_backbone

    return method_class(cfg.method)(cfg, build_backbone(cfg.backbone), num_classes)
