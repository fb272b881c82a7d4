"""The training step and the epoch around it, with sums kept on the device (no per-step host sync)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from rrdist import startup
from rrdist.train.batches import Batch


class TrainStep:
    """forward, backward, optimizer step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str = "fp32") -> None:
        self.model, self.optimizer = model, optimizer
        self.bf16 = precision == "bf16"

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(batch.views.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, metrics = self.model(batch.views, batch.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, metrics


class EpochSums:
    """The epoch's sums on the device: the method's metrics, then steps, non-finite losses and views."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = tuple(names)
        self.sums = torch.zeros(len(self.names) + 3, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], views: int) -> None:
        for i, name in enumerate(self.names):
            self.sums[i] += metrics[name]
        n = len(self.names)
        self.sums[n] += 1
        self.sums[n + 1] += ~torch.isfinite(loss.detach())
        self.sums[n + 2] += views

    def restore(self, saved: torch.Tensor, saved_workers: int, workers: int) -> None:
        """Rank 0 takes back a checkpoint's sums (every worker's together). Each worker adds its
        share of a metric and a 1 to the steps at every step, so those sums scale with the worker
        count: a run resumed on another count rescales them, as if its workers had run those steps."""
        self.sums.copy_(saved)
        if saved_workers and saved_workers != workers:
            self.sums[:len(self.names) + 1] *= workers / saved_workers

    def totals(self) -> dict[str, float]:
        """Read once (the epoch's host sync): each metric's mean per step, and steps, nonfinite, views."""
        values = self.sums.tolist()
        steps = values[len(self.names)]
        out = {name: values[i] / max(steps, 1.0) for i, name in enumerate(self.names)}
        return {**out, "steps": steps, "nonfinite": values[-2], "views": values[-1]}


def train_epoch(step: TrainStep, batches: Iterable[Batch], sums: EpochSums, hook=None, progress=None,
                monitors: Sequence = (), first_step: int = 0, interruptions=None, steps: int = 0) -> EpochSums:
    """One pass over the batches, which start at step `first_step` of the epoch's `steps` (a resumed
    epoch); `hook` (tests only, `rrdist.train.hooks`) sees each step; `progress`
    (`rrdist.progress.Progress`) shows the running figures, reading the device only then; each of
    `monitors` (`rrdist.monitors`) sees each step after the optimizer's; `interruptions`
    (`rrdist.train.interruptions`) may checkpoint after a step, or end the epoch there."""
    views = 0
    for i, batch in enumerate(batches, start=first_step):
        startup.once("first_batch")
        if hook is not None:
            batch = hook.before_step(i, batch)
        loss, metrics = step(batch)
        for monitor in monitors:
            monitor.after_step(batch)
        sums.add(loss, metrics, batch.views.shape[0])
        startup.once("first_step")
        views += batch.views.shape[0]
        if hook is not None:
            hook.after_step(i, batch, metrics)
        if progress is not None and progress.due(i + 1):
            progress.update(i + 1, loss=float(sums.sums[0]) / (i + 1), views_per_s=views / progress.elapsed)
        if interruptions is not None:
            interruptions.after_step(i + 1, steps)
    if progress is not None:
        progress.close()
    return sums
