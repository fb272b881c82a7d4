"""Checkpoints inside an epoch: every few minutes, and at once when a worker is told to stop.

Every `check_every` steps the workers agree, in one all-reduce of two flags (none on a single
worker), on whether a checkpoint is due by rank 0's clock and whether any worker was told to stop:
SIGTERM (what SLURM and Kubernetes send before they kill) or Ray Train's notice that a node is
being drained. A due checkpoint is written at that step; a stop writes one and ends the workers
(`Preempted`), so Ray Train, or the batch system's requeue, continues from it. Between checks
nothing is read from the device: the check is one small host sync every `check_every` steps.

A batch job whose whole allocation ends (cluster/slurm.sbatch) names a stop file instead
(RRDIST_STOP_FILE, on a filesystem every node sees): once it exists the workers checkpoint at the
next check and the run ends (`Stopped`) rather than restart, so the job can requeue itself.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from rrdist.train import session
from rrdist.train.sigterm import STOP


class Preempted(RuntimeError):
    """The workers were told to stop and have saved a checkpoint to continue from."""


class Stopped(Preempted):
    """As Preempted, for the whole run: the stop file exists (no restart can help until it is gone)."""


def stop_files(own: str | None = None, variable: str = "RRDIST_STOP_FILE") -> str | None:
    """The stop files of a run joined by os.pathsep: the caller's own (a sweep's pause) and those of
    $RRDIST_STOP_FILE (several joined by os.pathsep), made absolute. These are refused in one line where
    one could never ask for a stop: a folder, one that exists already (the run would stop at once), or
    one whose folder is missing."""
    from pathlib import Path

    from rrdist.errors import ConfigError

    found = [own] if own else []
    for name in os.environ.get(variable, "").split(os.pathsep):
        if not name:
            continue
        path = Path(os.path.abspath(os.path.expanduser(name)))
        if path.is_dir():
            raise ConfigError(f"{variable} {name} is a folder: name a file that does not exist yet (creating it "
                              f"asks the run to checkpoint and stop)")
        if path.exists():
            raise ConfigError(f"{variable} {name} exists already, so the run would stop at once: remove it "
                              f"(creating it asks a running job to checkpoint and stop)")
        if not path.parent.is_dir():
            why = "is a file" if path.parent.exists() else "does not exist"
            raise ConfigError(f"{variable} {name} could never be created ({path.parent} {why}): name a file in an "
                              f"existing folder that every node sees")
        found.append(str(path))
    return os.pathsep.join(found) or None


def stop_requested(stop_file: str | None) -> bool:
    """Whether the stop file exists (or one of several, joined by os.pathsep)."""
    return bool(stop_file) and any(os.path.exists(f) for f in stop_file.split(os.pathsep) if f)


class Interruptions:
    def __init__(self, minutes: float, check_every: int, world: int, rank: int, device: torch.device,
                 save: Callable[[int], None], position=None, stop_file: str | None = None) -> None:
        self.minutes, self.check_every, self.world, self.rank = minutes, check_every, world, rank
        self.device, self.save, self.position = device, save, position  # position: rrdist.train.position
        self.last = time.monotonic()
        self.epoch = 0  # the epoch in progress (from 0), set by the worker loop
        self.stop_file = stop_file

    def stop_at_epoch_start(self) -> None:
        """Between epochs, after the last one's checkpoint: the stop file ends the run here (epochs
        shorter than `check_every` steps have no check inside them)."""
        ended = self.rank == 0 and stop_requested(self.stop_file)
        if self.world > 1:
            flag = torch.tensor([float(ended)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            ended = bool(flag.item())
        if ended:
            raise Stopped(f"stopped before epoch {self.epoch + 1} (the stop file {self.stop_file} exists): the "
                          f"checkpoint of the epoch before is saved; run the same command again to continue")

    def saved(self) -> None:
        """A checkpoint was written (also at an epoch's end): the interval counts from now."""
        self.last = time.monotonic()

    def after_step(self, done: int, steps: int) -> None:
        """After `done` of the epoch's `steps` steps; the last step is left to the epoch's own checkpoint."""
        if self.position is not None:
            self.position.at(self.epoch, done)
        if done % self.check_every or done >= steps:
            return
        due = self.rank == 0 and self.minutes > 0 and time.monotonic() - self.last >= 60 * self.minutes
        drained = session.drained()  # a barrier of every worker: asked of each, whatever its own signal
        stop = STOP.is_set() or drained
        ended = self.rank == 0 and stop_requested(self.stop_file)  # rank 0 looks: one file system call
        if self.world > 1:
            flags = torch.tensor([float(due), float(stop), float(ended)], device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            due, stop, ended = (bool(v) for v in flags.tolist())
        if due or stop or ended:
            self.save(done)
            self.saved()
        where = f"step {done} of {steps} in epoch {self.epoch + 1}"
        if ended:
            raise Stopped(f"stopped at {where} (the stop file {self.stop_file} exists): a checkpoint there is "
                          f"saved; run the same command again to continue")
        if stop:
            raise Preempted(f"told to stop at {where}: a checkpoint at that step is saved")
