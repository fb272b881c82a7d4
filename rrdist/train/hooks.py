"""Test hooks around the training step: the one door through which tests inject faults and read traces.

Production runs have none. They are set by the environment of the process that starts the run:
- RRDIST_FAULT=nan-loss: every step's views become NaN, as a diverged run's would be;
- RRDIST_FAULT=kill-worker:RANK:EPOCH:STEP: that worker kills its own process once, mid-epoch, as
  a lost machine would (a marker file in the run folder keeps the restarted worker alive);
- RRDIST_FAULT=sigterm-worker:RANK:EPOCH:STEP: that worker's process gets SIGTERM once, as from a
  batch system or a node being reclaimed (the same marker file);
- RRDIST_TRACE=FOLDER: every worker writes, per epoch, each step's loss (its share of the global
  loss), image indices, per-image view sums and the worker count to FOLDER/epoch{E}-rank{R}.json
  (syncs with the device); "{run}" in FOLDER stands for the run folder's name (a sweep's trials).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from rrdist import startup
from rrdist.train.batches import Batch


class StepHook:
    def __init__(self, fault: str | None, trace: str | None, rank: int, run_dir: Path, world: int = 1) -> None:
        self.fault, self.trace_dir, self.rank, self.run_dir = fault or "", trace, rank, Path(run_dir)
        self.world = world
        self.epoch, self.steps = 0, []

    @classmethod
    def from_loop_config(cls, loop_config: dict, rank: int, run_dir: Path, world: int = 1) -> "StepHook | None":
        fault, trace = loop_config.get("fault"), loop_config.get("trace")
        return cls(fault, trace, rank, run_dir, world) if fault or trace else None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.steps = epoch + 1, []

    def before_step(self, step: int, batch: Batch) -> Batch:
        if self.fault.startswith(("kill-worker:", "sigterm-worker:")):
            self._maybe_kill(step)
        if self.fault == "nan-loss":
            batch = batch._replace(views=batch.views * float("nan"))
        return batch

    def after_step(self, step: int, batch: Batch, metrics: dict) -> None:
        if self.trace_dir is None:
            return
        m = batch.indices.shape[0]
        views = batch.views.detach().double().reshape(-1, m, batch.views[0].numel()).sum(2).t()
        self.steps.append({"step": step, "loss": float(metrics["loss"]), "images": batch.indices.tolist(),
                           "views": views.tolist(), "workers": self.world})

    def end_epoch(self) -> None:
        if self.trace_dir is not None:
            Path(self.trace_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.trace_dir) / f"epoch{self.epoch}-rank{self.rank}.json").write_text(json.dumps(self.steps))

    def _maybe_kill(self, step: int) -> None:
        kind, rank, epoch, at = self.fault.split(":")
        marker = self.run_dir / ".fault-kill-worker"
        if (int(rank), int(epoch), int(at)) == (self.rank, self.epoch, step) and not marker.exists():
            marker.write_text(f"rank {self.rank} got {kind} in epoch {self.epoch} at step {step}\n")
            startup.mark("killed", rank=self.rank)
            os.kill(os.getpid(), signal.SIGKILL if kind == "kill-worker" else signal.SIGTERM)
