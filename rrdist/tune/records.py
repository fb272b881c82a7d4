"""A sweep trial's name, run folder and record, `trials/<name>/trial.json`.

Every trial keeps its own record, written atomically: Tune's own progress files lose history when a
sweep is restored, this one does not. The trial writes it when it completes or fails; the driver
writes it for trials that Tune ended before they could (stopped by the scheduler, or interrupted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrdist import kept
from rrdist.config import PretrainConfig
from rrdist.storage import RunFolder, join
from rrdist.tune.space import SweepSpec, has_random_axes

RECORD = "trial.json"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_name(axes: dict[str, Any], seed: int, trial_id: str | None = None) -> str:
    """Readable and stable: `K=4,gamma=2,seed=0` (plus Tune's id when axes are random draws)."""
    parts = [f"{k}={_fmt(v)}" for k, v in axes.items()] + [f"seed={seed}"]
    return ",".join(parts) + (f"_{trial_id}" if trial_id else "")


@dataclass(frozen=True)
class SweepTrial:
    """Who a trial is: its name, run folder, point, seed and settings."""

    name: str
    run_dir: str  # a path or a URI
    axes: dict[str, Any]
    seed: int
    trial_id: str | None
    config: PretrainConfig

    @property
    def record(self) -> dict[str, Any]:
        """The base of its record; the writer adds the status and what goes with it."""
        return {"trial": self.name, "trial_id": self.trial_id, "axes": self.axes, "seed": self.seed,
                "config": self.config.to_dict()}


def sweep_trial(spec: SweepSpec, params: dict[str, Any], trial_id: str | None, sweep_dir: str, root: str,
                data_uri: str | None = None) -> SweepTrial:
    """The trial of Tune's PARAMS (the axes' values and "seed") in SWEEP_DIR."""
    axes = {name: params[name] for name in spec.axes}
    seed = int(params["seed"])
    name = trial_name(axes, seed, trial_id if has_random_axes(spec) else None)
    run_dir = join(sweep_dir, "trials", name)
    return SweepTrial(name, run_dir, axes, seed, trial_id, spec.trial_config(axes, seed, root, run_dir, data_uri))


STATUSES = ("completed", "failed", "stopped", "interrupted")
RECORD_SHAPE = {"trial": str, "axes": dict, "seed": int, "config": dict, "status": kept.OneOf(*STATUSES)}


def parse_record(data: bytes) -> dict[str, Any] | None:
    """A record from its text; None when it is not one (half-written by a killed process, or damaged:
    the trial then runs again on a resume, and the report leaves it out, saying so)."""
    try:
        record = kept.json_of(data, RECORD_SHAPE)
        if record["status"] == "completed":
            kept.shaped(record, {"metrics": dict})
    except ValueError:
        return None
    return record


def read_record(run: str | Path) -> dict[str, Any] | None:
    """A trial's record in its run folder (a path or a URI); None if it has none (or a damaged one:
    the trial then runs again)."""
    data = RunFolder(run).read_bytes(RECORD)
    return parse_record(data) if data is not None else None


SWEEP_FILE = kept.Kept("sweep.yaml", lambda data: kept.yaml_of(data, {"spec": dict, "root": str}),
                       "restore it, or run the sweep into a new --out folder")


def read_sweep(folder: RunFolder) -> dict[str, Any] | None:
    """A sweep folder's sweep.yaml ({spec, root}); None when there is none; a one-line DataError
    when it is damaged."""
    return kept.read(folder, SWEEP_FILE)


def write_record(run: str | Path, record: dict[str, Any]) -> None:
    RunFolder(run).write_text(RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
