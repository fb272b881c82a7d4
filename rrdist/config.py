"""Run configuration: one dataclass, readable from YAML and the CLI, saved beside every run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rrdist.errors import ConfigError, first_line

AGGREGATIONS = ("cat", "sum", "mean", "max")


def read_yaml(path: str | Path, missing_hint: str) -> Any:
    """A YAML file's content; a one-line ConfigError when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {missing_hint}")
    return parse_yaml(path.read_text(), path)


def parse_yaml(text: str, source: str | Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({first_line(e)}): fix its syntax") from None


PRECISIONS = ("fp32", "bf16", "fp64")
HEADS = ("relation", "dot", "encoder_dot")


@dataclass
class PretrainConfig:
    # what to learn
    method: str = "relational"
    dataset: str = "cifar10"
    root: str = "data"
    data_uri: str = ""  # shared copy of ROOT (file://, s3://, ...): each node stages it into ROOT
    backbone: str = "conv4"
    K: int = 32
    gamma: float = 2.0
    aggregation: str = "cat"
    head: str = "relation"  # relation, or the Table 14 ablations dot / encoder_dot
    label_fraction: float = 0.0  # semi-supervised variant (appendix A.7): share of images whose label is used
    batch_size: int = 64  # images of one optimizer step over all workers (the paper's M); M / workers each
    lr: float = 1e-3
    epochs: int = 200
    seed: int = 0
    # where and how to run it
    workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # fractions share a GPU between trials of a sweep
    cpus_per_worker: int = 1
    loader_workers: int = 1
    checkpoint_every: int = 10
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    sync_bn: bool = True  # BatchNorm over the global batch, as on the paper's one GPU (False: per worker)
    precision: str = "fp32"  # or bf16: autocast of the forward pass; fp64: numerical checks (slow)
    compile: bool = False  # torch.compile the backbone (a one-off compile of 10-60 s per worker)
    online_probe: bool = False  # a linear classifier on detached features, trained alongside (probe_acc)
    out: str = "runs/run"

    # Fields that may change when a run is resumed: they do not change what is learned.
    # The worker count is one of them: the same global batch, pairs and views on any number of workers.
    RESUMABLE = ("epochs", "checkpoint_every", "loader_workers", "cpus_per_worker", "gpus_per_worker", "max_failures",
                 "root", "data_uri", "out", "compile", "online_probe", "workers", "use_gpu")

    def validate(self) -> "PretrainConfig":
        from rrdist.data.datasets import DATASETS
        from rrdist.methods import METHODS
        from rrdist.models import BACKBONES

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.method in METHODS, f"unknown method '{self.method}': choose one of {', '.join(sorted(METHODS))}")
        need(self.dataset in DATASETS, f"unknown dataset '{self.dataset}': choose one of {', '.join(sorted(DATASETS))}")
        need(self.backbone in BACKBONES, f"unknown backbone '{self.backbone}': choose one of {', '.join(BACKBONES)}")
        need(self.aggregation in AGGREGATIONS,
             f"unknown aggregation '{self.aggregation}': choose one of {', '.join(AGGREGATIONS)}")
        need(self.head in HEADS, f"unknown head '{self.head}': choose one of {', '.join(HEADS)}")
        need(0.0 <= self.label_fraction <= 1.0,
             f"label fraction must be in [0, 1] (got {self.label_fraction}): pass e.g. --label-fraction 0.1")
        need(self.label_fraction == 0 or self.method == "relational",
             "--label-fraction is the semi-supervised variant of relational reasoning: use it with --method relational")
        need(self.K >= 2, f"K must be at least 2 (got {self.K}): relational reasoning pairs views of one image, pass --K 2 or more")
        need(self.batch_size >= 2, f"batch size must be at least 2 (got {self.batch_size}): negatives pair different images, pass --batch-size 2 or more")
        need(math.isfinite(self.gamma) and self.gamma >= 0, f"gamma must be >= 0 (got {self.gamma}): pass --gamma 0 for plain BCE or e.g. --gamma 2")
        need(math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0 (got {self.lr}): pass e.g. --lr 1e-3")
        need(self.epochs >= 1, f"epochs must be at least 1 (got {self.epochs}): pass --epochs 1 or more")
        need(self.workers >= 1, f"workers must be at least 1 (got {self.workers}): pass --workers 1 or more")
        need(self.cpus_per_worker >= 1, f"cpus per worker must be at least 1 (got {self.cpus_per_worker})")
        need(0 < self.gpus_per_worker <= 8, f"gpus per worker must be in (0, 8] (got {self.gpus_per_worker})")
        need(self.loader_workers >= 1, f"loader workers must be at least 1 (got {self.loader_workers})")
        need(self.checkpoint_every >= 1, f"checkpoint interval must be at least 1 epoch (got {self.checkpoint_every})")
        need(self.max_failures >= 0, f"max failures must be >= 0 (got {self.max_failures})")
        need(self.precision in PRECISIONS, f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        self._check_split()
        return self

    def _check_split(self) -> None:
        """The global batch must split evenly, and leave each worker enough images."""
        least = 1 if self.sync_bn or self.workers == 1 else 2  # a per-worker BatchNorm needs two images
        valid = [n for n in range(1, self.batch_size + 1) if self.batch_size % n == 0 and self.batch_size // n >= least]
        counts = ", ".join(map(str, valid))
        if self.batch_size % self.workers:
            raise ConfigError(f"--batch-size {self.batch_size} (images per step over all workers) cannot be split "
                              f"evenly over {self.workers} workers: use --workers {counts}, or a batch size "
                              f"divisible by {self.workers}")
        if self.batch_size // self.workers < least:
            raise ConfigError(f"--batch-size {self.batch_size} over {self.workers} workers leaves "
                              f"{self.batch_size // self.workers} image per worker, and BatchNorm per worker "
                              f"(--no-sync-bn) needs {least}: use --workers {counts}, or --sync-bn")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "configuration") -> "PretrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown key '{unknown[0]}' in {source}: valid keys are {', '.join(known)}")
        values = {}
        for name, value in data.items():
            kind = known[name].type
            try:
                if kind == "bool" and not isinstance(value, bool):
                    raise ValueError
                values[name] = {"int": int, "float": float, "str": str, "bool": bool}[kind](value)
            except (TypeError, ValueError):
                raise ConfigError(f"key '{name}' in {source} must be a {kind} (got {value!r})") from None
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PretrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: pass the path of a YAML file of settings")
        return cls.from_yaml_text(path.read_text(), path)

    @classmethod
    def from_yaml_text(cls, text: str, source: str | Path) -> "PretrainConfig":
        data = parse_yaml(text, source) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {source} must hold a mapping of settings")
        return cls.from_dict(data, source=str(source))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def differences(self, other: "PretrainConfig") -> list[str]:
        """Settings that differ and would change what is learned."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in self.RESUMABLE and mine[k] != theirs[k]]
