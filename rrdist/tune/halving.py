"""Synchronous successive halving (`scheduler: {hyperband: {...}}`): every trial trains to the first
rung and waits there, paused, until all have; the best 1/eta of them (by the monitor at that rung)
go on to the next rung; the last survivors run to the end.

It is HyperBand's most aggressive bracket holding the whole sweep, on rrdist's `epoch` (Tune's own
iteration counter starts again after a pause). Tune's `HyperBandScheduler` itself splits the trials
into brackets as they arrive (some run to the end unjudged: bench/RESULTS.md, 5c); with
`max_concurrent_trials` Tune creates no new trial while that many wait paused; and it keeps its
state in memory only. Here the decisions are a pure function of the monitor's values at the rungs
(`plan`), which are kept on disk (`halving.yaml` in the sweep folder) together with each trial's
fate: an interrupted sweep resumes with the same decisions, and a paused trial resumes from the
checkpoint of its rung epoch, so it is the same trial as one run straight through.

Seeds: by default a point (the axes' values) is judged by the mean of its seeds at the rung, and
kept or stopped with all of them (`judge: point`); `judge: trial` ranks every trial alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rrdist import kept
from rrdist.storage import is_uri

# Not a .json: Tune copies the sweep folder's top-level .json files on a restore and writes them back.
LEDGER = "halving.yaml"
KEYS = {"metric": "str", "mode": "str", "grace_period": "int", "reduction_factor": "float", "judge": "str"}
DEFAULTS = {"metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 3.0, "judge": "point"}
JUDGES = ("point", "trial")


def rungs(grace_period: int, reduction_factor: float, epochs: int) -> list[int]:
    """The epochs at which trials are judged: grace, grace*eta, ... while below `epochs`."""
    out, r = [], float(grace_period)
    while round(r) < epochs:
        if not out or round(r) > out[-1]:
            out.append(int(round(r)))
        r *= reduction_factor
    return out


@dataclass(frozen=True)
class Fate:
    """Where a trial stands in the halving."""
    state: str  # "train": may run (to `rung`, or to the end when rung is None); "wait": paused at
    #             `rung` until the others reach it; "stop": stopped at `rung`
    rung: int | None


def plan(groups: dict[str, str], values: dict[str, dict[int, float]], rung_epochs: list[int],
         reduction_factor: float, mode: str) -> dict[str, Fate]:
    """Every trial's fate from the values recorded at the rungs.

    groups: trial -> the group it is judged with (its point, or itself); every trial of the sweep.
    values: trial -> {rung epoch: the metric there}. A rung is decided once all trials still in
    the race have a value there: the groups are ranked by their trials' mean, and the best
    ceil(groups / reduction_factor) go on (ties: the group named first).
    """
    sign = -1.0 if mode == "max" else 1.0
    alive = sorted(groups)
    fates: dict[str, Fate] = {}
    for rung in rung_epochs:
        if len({groups[t] for t in alive}) <= 1:
            break  # one point left: nothing to compare it with, it trains to the end
        at = [t for t in alive if rung in values.get(t, {})]
        if len(at) < len(alive):  # the rung is not full yet: the ones there wait
            fates.update({t: Fate("wait" if t in at else "train", rung) for t in alive})
            return fates
        members: dict[str, list[str]] = {}
        for t in alive:
            members.setdefault(groups[t], []).append(t)
        score = {g: sign * sum(values[t][rung] for t in ts) / len(ts) for g, ts in members.items()}
        keep = sorted(members, key=lambda g: (score[g], g))[:max(1, math.ceil(len(members) / reduction_factor))]
        fates.update({t: Fate("stop", rung) for t in alive if groups[t] not in keep})
        alive = [t for t in alive if groups[t] in keep]
    fates.update({t: Fate("train", None) for t in alive})
    return fates


def halt_file(sweep_dir: str, trial: str) -> str | None:
    """The file that asks a trial's Train run to checkpoint and end (a pause, or a stop): its run
    folder's `.halt`. None for a sweep at a URI (no file its workers could look at): such a trial is
    ended by Tune alone, and Ray Train's placement-group cleaner frees its workers."""
    return None if is_uri(sweep_dir) else f"{sweep_dir}/trials/{trial}/.halt"


# Where a trial's Train run is to end, written by the scheduler before it starts or resumes the trial:
# the workers end the run after that epoch and its checkpoint, so a trial never trains a step past a
# rung while it waits there, however short its epochs (null: it trains to its last epoch).
RUNG = kept.Kept(".rung", lambda data: kept.json_of(data, {"pause_epoch": (int, type(None))}),
                 "remove it: the scheduler writes it again when it starts the trial")


EVENTS = ("paused", "resumed", "stopped", "completed")
SHAPE = {"metric": str, "mode": kept.OneOf("min", "max"), "rungs": [int], "judge": kept.OneOf(*JUDGES),
         "reduction_factor": kept.Number, "values": kept.Each(str, kept.Each((int, str), kept.Number)),
         "events": [{"trial": str, "event": kept.OneOf(*EVENTS)}],
         "end": kept.OneOf(True)}  # written last: a file cut short lacks it


def parse_ledger(data: bytes) -> dict[str, Any]:
    """halving.yaml's content, its values keyed by epoch (an int); ValueError where it is not what the
    scheduler writes."""
    saved = kept.yaml_of(data, SHAPE)
    values = {}
    for trial, at in saved["values"].items():
        for epoch in at:
            if str(epoch) not in map(str, saved["rungs"]):
                raise ValueError(f"'values' of {trial} at epoch {epoch!r}, which is not a rung ({saved['rungs']})")
        values[trial] = {int(e): float(v) for e, v in at.items()}
    return {**saved, "values": values}


LEDGER_FILE = kept.Kept(LEDGER, parse_ledger, "restore it, or run the sweep into a new --out folder")


def read_ledger(folder) -> dict[str, Any]:
    """The halving decisions kept in FOLDER (a rrdist.storage.RunFolder): {values: {trial: {epoch:
    value}}, events: [...], ...}, empty without a halving.yaml; a damaged one is a one-line DataError."""
    return kept.read(folder, LEDGER_FILE) or {"values": {}, "events": []}
