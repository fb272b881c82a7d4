"""Run configuration: the settings every run shares, readable from YAML and the CLI, saved beside every run.

A method's own settings are a dataclass in its own file (`rrdist.methods`); the run configuration
holds one of them in `settings`, and is saved flat (both side by side).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rrdist.errors import ConfigError, first_line


def read_yaml(path: str | Path, missing_hint: str) -> Any:
    """A YAML file's content; a one-line ConfigError when it is missing or not YAML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML file: {missing_hint}")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {missing_hint}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}): {missing_hint}") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str | Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({first_line(e)}): fix its syntax") from None


def as_mapping(data: Any, source: str | Path) -> dict[str, Any]:
    """A YAML document of settings (empty: none); anything but a mapping is refused in one line."""
    if not isinstance(data or {}, dict):
        raise ConfigError(f"config file {source} must hold a mapping of settings")
    return dict(data or {})


def read_settings(path: str | Path, missing_hint: str = "pass the path of a YAML file of settings") -> dict[str, Any]:
    return as_mapping(read_yaml(path, missing_hint), path)


PRECISIONS = ("fp32", "bf16", "fp64")


def setting(default: Any, help: str) -> Any:
    """A configuration field with its help text: the CLI's flags and the docs read it from here."""
    return field(default=default, metadata={"help": help})


def help_of(f) -> str:
    return f.metadata.get("help", "")


COMMAND_LINE = "the command line"  # the source of settings given as flags
TYPES = {"int": int, "float": float, "str": str, "bool": bool}  # a field's declared type name -> its type


def type_name(f) -> str:
    """A dataclass field's type as a name ("int", ...): a string where its module postpones annotations."""
    return f.type if isinstance(f.type, str) else f.type.__name__


def convert(value: Any, kind: str, key: str, source: str | Path | None = None) -> Any:
    """`value` as a `kind` ("int", "float", "str", "bool"), strictly: no bool as a number, no
    fraction as an integer, no number as a flag; a one-line ConfigError naming the key otherwise.
    Strings of numbers and of true/false are read (YAML reads 1e-3 as a string; a points axis holds strings)."""
    where = (f"--{key.replace('_', '-')}" if source == COMMAND_LINE else
             f"key '{key}' in {source}" if source is not None else f"'{key}'")
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
        if not math.isfinite(number) or (kind == "int" and abs(number) >= 2 ** 63):
            # never a setting (an interval of infinity means never: say that with the setting's own value)
            hint = f": {NEVER[key]}" if key in NEVER else ""
            raise ConfigError(f"{where} must be a finite number{' below 2^63' if kind == 'int' else ''} "
                              f"(got {value!r}){hint}")
        if kind == "float":
            return number
        if isinstance(value, int):
            return value
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        an = "an" if kind == "int" else "a"
        raise ConfigError(f"{where} must be {an} {kind} (got {value!r})") from None


# What to pass instead of an infinite interval, by setting.
NEVER = {"checkpoint_minutes": "pass 0 to checkpoint at epoch ends only",
         "check_every": "pass at most 100000 (steps between the workers' checks)"}
MOST_CHECK_EVERY = 100_000


def worker_range(value: Any, source: str | Path | None = None) -> tuple[int, int] | None:
    """(MIN, MAX) of a `workers` value written MIN-MAX (an elastic group); None for a plain count."""
    if not isinstance(value, str) or "-" not in value.strip().lstrip("-"):
        return None
    where = f"key 'workers' in {source}" if source is not None else "--workers"
    low, _, high = value.strip().partition("-")
    try:
        low, high = int(low), int(high)
    except ValueError:
        raise ConfigError(f"{where} must be a count or MIN-MAX, such as 4 or 2-8 (got {value!r})") from None
    if low < 1 or low > high:
        raise ConfigError(f"{where} {value}: an elastic group needs 1 <= MIN <= MAX, such as 1-{max(high, 1)}")
    return low, high


def expand_workers(data: dict[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """`workers: MIN-MAX` as min_workers MIN and workers MAX; other values as they are."""
    span = worker_range(data.get("workers"), source)
    if span is None:
        return data
    return {**data, "min_workers": span[0], "workers": span[1]}


def typed_values(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """data's values converted to the types of the dataclass `cls`'s fields (one-line errors)."""
    known = {f.name: f for f in fields(cls)}
    return {name: convert(value, type_name(known[name]), name, source) for name, value in data.items()}


@dataclass
class PretrainConfig:
    """What every run shares; `settings` holds the method's own (a dataclass declared in its file).

    Built by `rrdist.methods.config_from_dict`, which picks the method's settings; saved flat
    (`to_dict`: these fields and the method's side by side), as in config.yaml and search spaces.
    """
    # what to learn
    method: str = setting("", "pretraining method")  # "": the registry's first (rrdist.methods)
    dataset: str = setting("cifar10", "dataset name (rrdist data list)")
    root: str = setting("data", "data folder; .beton files live in ROOT/ffcv/")
    data_uri: str = setting("", "shared copy of ROOT (file://, s3://, gs://): each node stages it into ROOT once")
    backbone: str = setting("conv4", "backbone network")
    batch_size: int = setting(64, "images per optimizer step over all workers (the paper's M); "
                                  "each worker holds M / workers (shares differ by one where that is no integer)")
    epochs: int = setting(200, "total epochs (may grow when resuming)")
    seed: int = setting(0, "seed of weights, data order and views")
    # where and how to run it
    workers: int = setting(1, "Ray Train workers (data parallel); MIN-MAX (e.g. 2-8): an elastic group that "
                              "trains on as many as the cluster has, restarting at the latest checkpoint "
                              "when that changes (the same experiment at any count)")
    min_workers: int = setting(0, "the fewest workers of an elastic group (what --workers MIN-MAX sets); "
                                  "0: a fixed group of --workers")
    resize_check_s: float = setting(60.0, "seconds between an elastic group's looks for more workers (growing "
                                          "restarts at the latest checkpoint)")
    use_gpu: bool = setting(False, "one GPU per worker, NCCL")
    gpus_per_worker: float = setting(1.0, "GPUs per worker with --use-gpu; fractions share a GPU between trials")
    cpus_per_worker: int = setting(1, "CPUs reserved per worker (and torch threads)")
    in_process: bool = setting(False, "train in this process (Ray Train's local mode): no Ray to start, one "
                                      "worker; checkpoints go to the run folder, but a failure ends the run")
    loader_workers: int = setting(1, "FFCV decoding threads per worker")
    checkpoint_every: int = setting(10, "epochs between checkpoints (the last epoch always gets one)")
    checkpoint_minutes: float = setting(10.0, "minutes between checkpoints inside an epoch, resumed at the next "
                                              "step (a preemption loses at most this much); 0: epoch ends only")
    check_every: int = setting(20, "steps between the workers' checks for a due checkpoint or a stop "
                                   "(SIGTERM, a node drained): one small collective")
    max_failures: int = setting(3, "restarts of the worker group from the last checkpoint after a failure")
    sync_bn: bool = setting(True, "BatchNorm statistics over the global batch, all workers together, as one "
                                  "process would compute them; --no-sync-bn: each worker's own, fewer "
                                  "collectives (faster on CPU workers) but no longer the one-process experiment")
    precision: str = setting("fp32", "fp32; bf16 autocast of the forward pass; fp64 for numerical checks (slow)")
    compile: bool = setting(False, "torch.compile the backbone (a one-off compile of 10-60 s per worker)")
    out: str = setting("runs/run", "run folder: a path (local or shared filesystem) or a bucket URI (s3://, gs://, ...)")
    settings: Any = field(default=None, metadata={"help": None})  # the method's own; not a flag of its own
    monitors: dict = field(default_factory=dict, metadata={"help": None})  # each monitor's settings, by its name

    # Fields that may change when a run is resumed: they do not change what is learned.
    # The worker count is one of them: the same global batch, pairs and views on any number of workers.
    RESUMABLE = ("epochs", "checkpoint_every", "checkpoint_minutes", "check_every", "loader_workers",
                 "cpus_per_worker", "gpus_per_worker", "max_failures",
                 "root", "data_uri", "out", "compile", "workers", "min_workers", "resize_check_s",
                 "use_gpu", "in_process")  # and every monitor setting
    COMPOSED = ("settings", "monitors")  # filled from the registries of methods and monitors
    PATHS = ("root", "out", "data_uri")  # relative to the folder the configuration was made in

    def __post_init__(self) -> None:
        # A relative path means the folder the user ran the command from, in every process and on every
        # node (a Ray worker runs elsewhere): made absolute here, where the configuration is made.
        from rrdist.storage import absolute

        for name in self.PATHS:
            setattr(self, name, absolute(getattr(self, name)))

    @classmethod
    def shared_fields(cls) -> list:
        return [f for f in fields(cls) if f.name not in cls.COMPOSED]

    def validate(self) -> "PretrainConfig":
        from rrdist.data.datasets import DATASETS
        from rrdist.models import BACKBONES

        need(self.dataset in DATASETS, f"unknown dataset '{self.dataset}': choose one of {', '.join(sorted(DATASETS))}")
        need(self.backbone in BACKBONES, f"unknown backbone '{self.backbone}': choose one of {', '.join(BACKBONES)}")
        need(self.batch_size >= 2, f"batch size must be at least 2 (got {self.batch_size}): BatchNorm and "
                                   f"negatives need two images, pass --batch-size 2 or more")
        need(self.epochs >= 1, f"epochs must be at least 1 (got {self.epochs}): pass --epochs 1 or more")
        need(self.workers >= 1, f"workers must be at least 1 (got {self.workers}): pass --workers 1 or more")
        need(not self.in_process or (self.workers == 1 and not self.min_workers),
             f"--in-process trains one worker in this process (got --workers {self.workers if not self.min_workers else f'{self.min_workers}-{self.workers}'}): "
             f"pass --workers 1, or drop --in-process")
        need(0 <= self.min_workers <= self.workers,
             f"an elastic group's fewest workers must be 1 to {self.workers} (got {self.min_workers}-{self.workers}): "
             f"pass --workers MIN-MAX with 1 <= MIN <= MAX")
        need(self.resize_check_s == self.resize_check_s and self.resize_check_s > 0,
             f"--resize-check-s must be more than 0 (got {self.resize_check_s}): pass 60")
        need(self.cpus_per_worker >= 1, f"cpus per worker must be at least 1 (got {self.cpus_per_worker})")
        need(0 < self.gpus_per_worker <= 8, f"gpus per worker must be in (0, 8] (got {self.gpus_per_worker})")
        need(self.loader_workers >= 1, f"loader workers must be at least 1 (got {self.loader_workers})")
        need(self.checkpoint_every >= 1, f"checkpoint interval must be at least 1 epoch (got {self.checkpoint_every})")
        need(self.checkpoint_minutes == self.checkpoint_minutes and self.checkpoint_minutes >= 0,
             f"--checkpoint-minutes must be >= 0 (got {self.checkpoint_minutes}): pass 0 to checkpoint at epoch ends only")
        need(1 <= self.check_every <= MOST_CHECK_EVERY,
             f"--check-every must be 1 to {MOST_CHECK_EVERY} steps (got {self.check_every}): more would mean never "
             f"looking for a due checkpoint or a stop inside an epoch; pass 20")
        need(self.max_failures >= 0, f"max failures must be >= 0 (got {self.max_failures})")
        need(self.precision in PRECISIONS, f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        self._check_split()
        if self.settings is not None:
            self.settings.validate(self)
        for monitor in self.monitors.values():
            monitor.validate(self)
        return self

    def _check_split(self) -> None:
        """The global batch must leave each worker enough images at the largest worker count (shares
        differ by one image at most, so any count up to M runs the same experiment)."""
        least = 1 if self.sync_bn or self.workers == 1 else 2  # a per-worker BatchNorm needs two images
        most = self.batch_size // least
        if self.batch_size // self.workers < least:
            need_ = "" if least == 1 else ", and BatchNorm per worker (--no-sync-bn) needs 2 images each"
            raise ConfigError(f"--batch-size {self.batch_size} cannot give each of {self.workers} workers "
                              f"{'an image' if least == 1 else 'two images'}{need_}: pass --workers {most} "
                              f"or fewer, or --batch-size {self.workers * least} or more")

    def to_dict(self) -> dict[str, Any]:
        """Flat: the shared fields, the method's settings, then every monitor's."""
        shared = {f.name: getattr(self, f.name) for f in self.shared_fields()}
        monitors = {k: v for s in self.monitors.values() for k, v in dataclasses.asdict(s).items()}
        return {**shared, **(dataclasses.asdict(self.settings) if self.settings is not None else {}), **monitors}

    @classmethod
    def shared_from_yaml(cls, path: str | Path) -> "PretrainConfig":
        """The shared settings of a saved run (config.yaml), without its method's: what evaluations need."""
        data = read_settings(path, "pass the folder of a finished run")
        names = {f.name for f in cls.shared_fields()}
        return cls(**typed_values(cls, {k: v for k, v in data.items() if k in names}, str(path)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def differences(self, other: "PretrainConfig") -> list[str]:
        """Settings that differ and would change what is learned (a monitor's never do)."""
        mine, theirs = self.to_dict(), other.to_dict()
        watching = {f.name for s in self.monitors.values() for f in fields(s)}
        return [k for k in mine if k not in self.RESUMABLE and k not in watching and mine[k] != theirs.get(k)]

    def value(self, name: str) -> Any:
        """A setting by name, shared or the method's."""
        return self.to_dict()[name]


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
