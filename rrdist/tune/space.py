"""Search spaces: YAML files of fixed settings, swept axes, seeds, resources and evaluations.

```yaml
name: k_gamma                  # the sweep's folder name (default: the file's name)
fixed: {dataset: cifar10, backbone: conv4, epochs: 200}   # every trial's settings (a method's own: its trials')
axes:                          # swept settings: grid / choice / uniform / loguniform
  K: {grid: [2, 4, 8, 16, 32]}
  gamma: {grid: [0, 1, 2, 3]}
  # variant: {points: [aggregation=sum, head=dot+backbone=resnet32]}   # a grid of setting bundles
seeds: 3                       # every point runs with seeds 0..2 (or a list of seeds)
samples: 1                     # draws of the random axes (choice / uniform / loguniform)
trial: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # per trial (workers: MIN-MAX: elastic)
concurrency: 2                 # trials at once (0: as many as the cluster fits)
scheduler: fifo                # or {asha: {metric: loss, mode: min, grace_period: 5, reduction_factor: 2}}
                               # or {hyperband: {metric: knn_acc, mode: max, grace_period: 1, reduction_factor: 4,
                               #                 judge: point}}   synchronous halving (rrdist/tune/halving.py)
evaluations: {linear: {epochs: 100}, linear_random: {epochs: 100}}   # also finetune: {epochs}, retrieval: {per_class}
per_method:                    # settings of one method's trials (over 'fixed'), e.g. its paper batch size
  simclr: {batch_size: 128}
```
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from rrdist.config import PretrainConfig, convert, read_yaml, worker_range
from rrdist.errors import ConfigError
from rrdist.methods import METHODS, all_keys, config_from_dict, default_method, setting_owners
from rrdist.monitors import MONITORS, figure_names
from rrdist.tune import halving

TOP_KEYS = ("name", "fixed", "axes", "seeds", "samples", "trial", "concurrency", "scheduler", "evaluations",
            "per_method")
AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "points")
TRIAL_KEYS = {"workers": "int", "cpus_per_worker": "int", "gpus_per_worker": "float", "loader_workers": "int"}
DEFAULT_TRIAL = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.0}
# Set by the sweep itself, not by a space: where trials live and what resources they get (a one-worker
# trial trains in its own process, a larger one on Ray Train workers: in_process is not a trial's choice).
NOT_SWEEPABLE = ("out", "root", "seed", "workers", "cpus_per_worker", "gpus_per_worker", "use_gpu", "loader_workers",
                 "in_process")
EVALUATIONS = {"linear": "trained", "linear_random": "random", "finetune": "trained",
               "retrieval": "trained"}  # name -> backbone weights evaluated
_LINEAR_KEYS = {"epochs": "int", "batch_size": "int", "lr": "float"}
EVAL_KEYS = {"linear": _LINEAR_KEYS, "linear_random": _LINEAR_KEYS, "finetune": {"epochs": "int", "batch_size": "int"},
             "retrieval": {"per_class": "int"}}
DEFAULT_EVALUATIONS = {"linear": {}}
ASHA_KEYS = {"metric": "str", "mode": "str", "grace_period": "int", "reduction_factor": "float"}
DEFAULT_ASHA = {"metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2.0}
SCHEDULERS = {"asha": (ASHA_KEYS, DEFAULT_ASHA, "an ASHA setting"),
              "hyperband": (halving.KEYS, halving.DEFAULTS, "a hyperband setting")}


@dataclass
class SweepSpec:
    name: str
    fixed: dict[str, Any]
    axes: dict[str, dict[str, list]]
    seeds: list[int]
    samples: int = 1
    trial: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TRIAL))
    concurrency: int = 0
    scheduler: dict[str, dict[str, Any]] | None = None  # None: FIFO; else {asha|hyperband: settings}
    evaluations: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_EVALUATIONS))
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "space"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fixed": self.fixed, "axes": self.axes, "seeds": self.seeds,
                "samples": self.samples, "trial": self.trial, "concurrency": self.concurrency,
                "scheduler": self.scheduler or "fifo",
                "evaluations": self.evaluations, "per_method": self.per_method}

    @property
    def scheduler_kind(self) -> str:
        return next(iter(self.scheduler)) if self.scheduler else "fifo"

    @property
    def scheduler_settings(self) -> dict[str, Any]:
        return next(iter(self.scheduler.values())) if self.scheduler else {}

    def settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """A point's settings: axis values, with each `points` axis's bundle spread out."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            if "points" in self.axes.get(name, {}):
                out.update(point_settings(value))
            else:
                out[name] = value
        return out

    def trial_config(self, values: dict[str, Any], seed: int, root: str, out: str,
                     data_uri: str | None = None) -> PretrainConfig:
        gpus = float(self.trial.get("gpus_per_worker", 0) or 0)
        values = self.settings(values)
        method = values.get("method", self.fixed.get("method")) or default_method()
        owners = setting_owners()  # a fixed setting of some methods applies to their trials only
        fixed = {k: v for k, v in self.fixed.items() if k not in owners or method in owners[k]}
        data = {**fixed, **self.per_method.get(method, {}), **values,
                "seed": seed, "root": root, "out": out, **({"data_uri": data_uri} if data_uri else {}),
                "workers": self.trial.get("workers", 1), "cpus_per_worker": self.trial.get("cpus_per_worker", 1),
                "use_gpu": gpus > 0, "gpus_per_worker": gpus if gpus > 0 else 1.0}
        for key in ("loader_workers", "min_workers"):
            if key in self.trial:
                data[key] = self.trial[key]
        if self.scheduler_kind == "hyperband":
            data["checkpoint_every"] = 1  # a paused trial resumes from the checkpoint of its rung's epoch
        return config_from_dict(data, source=self.source)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes (random axes take their first value), for checks."""
        names = list(self.axes)
        values = []
        for name in names:
            (kind, vals), = self.axes[name].items()
            values.append(vals if kind in ("grid", "choice", "points") else [vals[0]])
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def trial_count(self) -> int:
        grid = math.prod(len(next(iter(v.values()))) for v in self.axes.values() if "grid" in v or "points" in v)
        return grid * len(self.seeds) * self.samples


def point_settings(point: str) -> dict[str, str]:
    """`aggregation=sum+backbone=conv4` -> {aggregation: sum, backbone: conv4} (typed by the config)."""
    return dict(part.split("=", 1) for part in point.split("+"))


def _fail(source: str, key: str, why: str) -> None:
    raise ConfigError(f"{source}: '{key}' {why}")


def typed_block(raw: Any, kinds: dict[str, str], source: str, where: str, what: str) -> dict[str, Any]:
    """A block of named values (trial resources, an evaluation's or a scheduler's settings): a
    mapping of known keys, each converted to its kind by the run configuration's rule."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(source, where, f"must be a mapping of {what}: {', '.join(kinds)}")
    out = {}
    for key, value in raw.items():
        if key not in kinds:
            _fail(source, f"{where}.{key}", f"is not {what}: use {', '.join(kinds)}")
        out[key] = convert(value, kinds[key], f"{where}.{key}", source)
    return out


def at_least(source: str, where: str, values: dict[str, Any], lowest: dict[str, float]) -> None:
    for key, low in lowest.items():
        if key in values and not values[key] >= low:
            _fail(source, f"{where}.{key}", f"must be at least {low:g} (got {values[key]})")


def count(data: dict, key: str, source: str, default: int, low: int, meaning: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(source, key, f"must be an integer >= {low}{meaning}")
    return value


def parse(data: Any, source: str = "space", default_name: str = "sweep") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search space must be a mapping of {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            _fail(source, key, f"is not a search-space key: use {', '.join(TOP_KEYS)}")
    fixed = read_fixed(data.get("fixed"), source)
    axes = read_axes(data.get("axes"), fixed, source)
    spec = SweepSpec(name=str(data.get("name") or default_name), fixed=fixed, axes=axes,
                     seeds=read_seeds(data.get("seeds", 1), source),
                     samples=count(data, "samples", source, 1, 1, ""),
                     trial=read_trial(data.get("trial"), source),
                     concurrency=count(data, "concurrency", source, 0, 0, " (0: as many as fit)"),
                     scheduler=read_scheduler(data.get("scheduler", "fifo"), source),
                     evaluations=read_evaluations(data.get("evaluations", dict(DEFAULT_EVALUATIONS)), source),
                     per_method=read_per_method(data.get("per_method"), axes, source), source=source)
    check_points(spec)
    return spec


def read_fixed(fixed: Any, source: str) -> dict[str, Any]:
    fixed = fixed or {}
    if not isinstance(fixed, dict):
        _fail(source, "fixed", "must be a mapping of settings")
    config_keys = all_keys()
    for key in fixed:
        if key not in config_keys:
            _fail(source, f"fixed.{key}", f"is not a setting: use {', '.join(config_keys)}")
        if key in NOT_SWEEPABLE:
            _fail(source, f"fixed.{key}", "is set by the sweep itself (see 'trial', 'seeds' and --root)")
    return fixed


def read_axes(axes: Any, fixed: dict[str, Any], source: str) -> dict[str, dict[str, list]]:
    axes = axes or {}
    if not isinstance(axes, dict):
        _fail(source, "axes", "must be a mapping of setting: {grid|choice|uniform|loguniform: values}")
    for key, spec in axes.items():
        if isinstance(spec, dict) and list(spec) == ["points"]:  # a named list of setting bundles
            check_points_axis(key, spec["points"], axes, source)
        else:
            check_axis(key, spec, fixed, source)
    return axes


def check_points_axis(key: str, values: Any, axes: dict, source: str) -> None:
    where, config_keys = f"axes.{key}.points", all_keys()
    if key in config_keys:
        _fail(source, f"axes.{key}", "a points axis names variants, not a setting: call it e.g. 'variant'")
    if not isinstance(values, list) or not values:
        _fail(source, where, "must be a non-empty list like [aggregation=sum, head=dot+K=16]")
    for point in values:
        parts = str(point).split("+")
        if not all("=" in part for part in parts):
            _fail(source, where, f"'{point}' is not setting=value[+setting=value]")
        for name in (part.split("=", 1)[0] for part in parts):
            if name not in config_keys or name in NOT_SWEEPABLE:
                _fail(source, where, f"'{name}' in '{point}' is not a setting a sweep can vary")
            if name in axes:
                _fail(source, where, f"'{name}' is also an axis: keep it in one place")


def check_axis(key: str, spec: Any, fixed: dict[str, Any], source: str) -> None:
    where = f"axes.{key}"
    if key not in all_keys():
        _fail(source, where, f"is not a setting: use {', '.join(all_keys())}")
    if key in NOT_SWEEPABLE:
        _fail(source, where, "cannot be swept (seeds come from 'seeds', resources from 'trial')")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in AXIS_KINDS:
        _fail(source, where, f"must be one of {{{': [...]}, {'.join(AXIS_KINDS)}: [...]}}")
    (kind, values), = spec.items()
    if not isinstance(values, list) or not values:
        _fail(source, f"{where}.{kind}", "must be a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
                or values[0] >= values[1]:
            _fail(source, f"{where}.{kind}", "must be [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            _fail(source, f"{where}.{kind}", "needs low > 0")
    if key in fixed:
        _fail(source, where, "is also in 'fixed': keep it in one place")


def read_per_method(per_method: Any, axes: dict, source: str) -> dict[str, dict[str, Any]]:
    per_method = per_method or {}
    if not isinstance(per_method, dict):
        _fail(source, "per_method", "must be a mapping of method: {setting: value}")
    shared = {f.name for f in PretrainConfig.shared_fields()}
    for method, settings in per_method.items():
        if method not in METHODS:
            _fail(source, f"per_method.{method}", f"is not a method: use {', '.join(sorted(METHODS))}")
        if not isinstance(settings, dict):
            _fail(source, f"per_method.{method}", "must be a mapping of settings")
        for key in settings:
            where = f"per_method.{method}.{key}"
            if key == "method" or key not in shared | {f.name for f in fields(METHODS[method].Settings)}:
                _fail(source, where, f"is not a setting {method}'s trials can change")
            if key in NOT_SWEEPABLE:
                _fail(source, where, "is set by the sweep itself (see 'trial', 'seeds' and --root)")
            if key in axes:
                _fail(source, where, "is also an axis: keep it in one place")
    return per_method


def read_seeds(seeds: Any, source: str) -> list[int]:
    if isinstance(seeds, bool) or not (isinstance(seeds, int) and seeds >= 1 or
                                       isinstance(seeds, list) and seeds and
                                       all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        _fail(source, "seeds", "must be a count >= 1 or a list of integer seeds")
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def read_trial(raw: Any, source: str) -> dict[str, Any]:
    """The trial block; `workers: MIN-MAX` makes every trial an elastic group."""
    span = worker_range(raw.get("workers"), f"{source} (trial)") if isinstance(raw, dict) else None
    if span is not None:
        raw = {**raw, "workers": span[1]}
    trial = {**DEFAULT_TRIAL, **typed_block(raw, TRIAL_KEYS, source, "trial", "a trial setting")}
    if span is not None:
        trial["min_workers"] = span[0]
    at_least(source, "trial", trial, {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "loader_workers": 1})
    return trial


def read_scheduler(raw: Any, source: str) -> dict[str, dict[str, Any]] | None:
    """None for FIFO; else {asha|hyperband: settings}, checked here; check_points checks them
    against what each point's trials report and how long they train."""
    if raw == "fifo":
        return None
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in SCHEDULERS):
        _fail(source, "scheduler", "must be fifo, {asha: {...}} or {hyperband: {...}}")
    (kind, block), = raw.items()
    keys, defaults, what = SCHEDULERS[kind]
    where = f"scheduler.{kind}"
    settings = {**defaults, **typed_block(block, keys, source, where, what)}
    if settings["mode"] not in ("min", "max"):
        _fail(source, f"{where}.mode", "must be min or max")
    if settings.get("judge", "point") not in halving.JUDGES:
        _fail(source, f"{where}.judge", f"must be {' or '.join(halving.JUDGES)} (how seeds are judged)")
    at_least(source, where, settings, {"grace_period": 1, "reduction_factor": 2})
    if not math.isfinite(settings["reduction_factor"]):
        _fail(source, f"{where}.reduction_factor", "must be a finite number >= 2")
    metrics = epoch_metric_names()
    if settings["metric"] not in metrics:
        _fail(source, f"{where}.metric", f"must be a per-epoch metric: {', '.join(metrics)}")
    return {kind: settings}


def read_evaluations(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    if isinstance(raw, list):
        raw = {name: {} for name in raw}
    if not isinstance(raw, dict):
        _fail(source, "evaluations", f"must be a mapping of {', '.join(EVALUATIONS)}")
    evaluations = {}
    for name, settings in raw.items():
        if name not in EVALUATIONS:
            _fail(source, f"evaluations.{name}", f"is not an evaluation: use {', '.join(EVALUATIONS)}")
        where = f"evaluations.{name}"
        evaluations[name] = typed_block(settings, EVAL_KEYS[name], source, where, "a setting")
        at_least(source, where, evaluations[name], {"epochs": 1, "batch_size": 1, "per_class": 1})
        if evaluations[name].get("lr", 1.0) <= 0:
            _fail(source, f"{where}.lr", f"must be > 0 (got {evaluations[name]['lr']})")
    return evaluations


def check_points(spec: SweepSpec) -> None:
    """Every grid point must be a valid run, and every method setting in 'fixed' must reach a trial."""
    methods = set()
    for point in spec.grid_points():
        try:
            methods.add(spec.trial_config(point, spec.seeds[0], root="data", out="runs/x").validate().method)
        except ConfigError as e:
            raise ConfigError(f"{spec.source}: the point {point} is invalid: {e}") from None
    owners = setting_owners()
    for key in spec.fixed:
        if key in owners and not methods & set(owners[key]):
            _fail(spec.source, f"fixed.{key}", f"is a setting of {', '.join(owners[key])}, which this sweep does not run")
    if spec.scheduler:
        check_scheduler(spec)


def reported_metrics(cfg: PretrainConfig) -> list[str]:
    """What a run of CFG reports every epoch: its method's metrics and its enabled monitors' figures."""
    monitors = [f for name, s in cfg.monitors.items() if s.enabled() for f in MONITORS[name].figures]
    return [*METHODS[cfg.method].metric_names, *monitors]


def check_scheduler(spec: SweepSpec) -> None:
    """The scheduler's metric must be reported by every trial, and its first rung come before the end."""
    kind, settings = spec.scheduler_kind, spec.scheduler_settings
    where = f"scheduler.{kind}"
    if kind == "hyperband":
        if "checkpoint_every" in spec.fixed or "checkpoint_every" in spec.axes:
            _fail(spec.source, "checkpoint_every", "is set by hyperband (every epoch: a paused trial resumes "
                                                   "from its rung's checkpoint): remove it")
    epochs = set()
    for point in spec.grid_points():
        cfg = spec.trial_config(point, spec.seeds[0], root="data", out="runs/x")
        if settings["metric"] not in reported_metrics(cfg):
            _fail(spec.source, f"{where}.metric", f"{settings['metric']} is not reported by the trials of {point or 'the sweep'} "
                                                  f"(they report {', '.join(reported_metrics(cfg))}): enable the monitor "
                                                  f"that gives it in 'fixed' (e.g. knn_every: 1), or pick one of those")
        if settings["grace_period"] >= cfg.epochs:
            _fail(spec.source, f"{where}.grace_period", f"is {settings['grace_period']}, not before the last epoch "
                                                        f"({cfg.epochs}) of {point or 'the trials'}: no rung to judge at")
        epochs.add(cfg.epochs)
    if kind == "hyperband" and len(epochs) > 1:
        _fail(spec.source, f"{where}", f"needs one length for every trial (got epochs {sorted(epochs)}): "
                                       f"rungs are shared epochs; sweep 'epochs' under fifo or asha")


def epoch_metric_names() -> list[str]:
    """What every epoch reports that a scheduler can act on: the methods' metrics and the monitors' figures."""
    names = {n: None for method in METHODS.values() for n in method.metric_names}
    return [*names, *figure_names()]


def load(path: str | Path) -> SweepSpec:
    data = read_yaml(path, "pass a search-space YAML file such as tune_spaces/demo.yaml")
    return parse(data, source=str(path), default_name=Path(path).stem)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tune param_space: one entry per axis, plus the seeds as a grid."""
    from ray import tune

    samplers = {"grid": tune.grid_search, "points": tune.grid_search, "choice": tune.choice,
                "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    space: dict[str, Any] = {}
    for name, axis in spec.axes.items():
        (kind, values), = axis.items()
        space[name] = samplers[kind](values)
    space["seed"] = tune.grid_search(spec.seeds)
    return space


def has_random_axes(spec: SweepSpec) -> bool:
    return spec.samples > 1 or any(next(iter(a)) not in ("grid", "points") for a in spec.axes.values())
