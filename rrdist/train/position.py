"""Where training is, step by step, so that a restart can say what it redoes and how long it stood.

Rank 0 overwrites one fixed-width line of the run's working copy after every step (a write into
the page cache, no sync: a killed process leaves it behind). When the worker group starts again
from a checkpoint (a failure, a preemption, or an elastic group resized), rank 0 compares that
line with the checkpoint and logs the restart as an event (`restart_event`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rrdist import kept

POSITION_FILE = "position"
_LINE = "{epoch:10d} {step:10d} {workers:6d} {time:18.3f}\n"  # fixed width: overwritten in place


class Position:
    """Rank 0's record of the last step done: (epoch from 0, steps done in it, workers, time)."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.workers = workers
        self.fd = os.open(Path(folder) / POSITION_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def at(self, epoch: int, step: int) -> None:
        line = _LINE.format(epoch=epoch, step=step, workers=self.workers, time=time.time())
        os.pwrite(self.fd, line.encode(), 0)

    def close(self) -> None:
        os.close(self.fd)


def parse_position(data: bytes) -> dict[str, Any]:
    """The position line's fields; ValueError when it is not one."""
    fields = kept.text_of(data).split()
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields, not 4")
    epoch, step, workers, when = fields
    return {"epoch": int(epoch), "step": int(step), "workers": int(workers), "time": float(when)}


def read_position(folder: Path) -> dict[str, Any] | None:
    """The last step recorded in `folder`; None when there is none, or when it is damaged: it only
    tells what a restart redid, so a damaged one costs that line and nothing else."""
    try:
        return parse_position((Path(folder) / POSITION_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def restart_event(last: dict[str, Any] | None, epoch: int, step: int, steps_per_epoch: int,
                  saved_workers: int, workers: int) -> dict[str, Any] | None:
    """The event of a start from the checkpoint at (`epoch`, `step`) on `workers` workers, after the
    last recorded step `last`; None for a first start or a resume that redoes nothing on as many workers."""
    if last is None and not saved_workers:
        return None
    before = last["workers"] if last is not None else saved_workers
    redone = None
    if last is not None:
        redone = max(0, (last["epoch"] - epoch) * steps_per_epoch + last["step"] - step)
    if before == workers and not redone:
        return None
    return {"event": "resize" if before != workers else "restart", "epoch": epoch, "step": step,
            "workers_before": before, "workers": workers, "steps_redone": redone,
            "stalled_s": round(time.time() - last["time"], 3) if last is not None else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
