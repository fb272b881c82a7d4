"""An epoch's figures: gathered over the workers, checked, logged (rank 0) and reported to Ray."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rrdist import atomic, kept
from rrdist.errors import MARKER
from rrdist.storage import RunFolder
from rrdist.train.step import EpochSums

FAILURE_FILE = "failure.json"  # a failure no restart can fix, for the driver to report
FAILURE = kept.Kept(FAILURE_FILE, lambda data: kept.json_of(data, {"error": str, "paused?": int}),
                    "remove it (it only holds the last run's error)")


def parse_metrics(data: bytes) -> list[dict[str, Any]]:
    """metrics.jsonl's lines: one JSON object per epoch or event, each with its epoch. A last line
    without its newline was cut short by a killed writer: it is left out (a resumed run drops it)."""
    *complete, _tail = kept.text_of(data).split("\n")
    lines = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            lines.append(kept.shaped(json.loads(line), {"epoch": int}, f"line {number}"))
        except json.JSONDecodeError:
            raise ValueError(f"line {number} is not JSON") from None
    return lines


METRICS = kept.Kept("metrics.jsonl", parse_metrics,
                    "restore it, or remove it: the run goes on, and the earlier epochs' figures stay in tb/")


def epoch_metrics(sums: EpochSums, elapsed: float, world: int, epoch: int) -> tuple[dict[str, Any], bool]:
    """The epoch's global figures (all workers' sums, the slowest worker's time), and whether every
    step's loss was finite: one host sync."""
    if world > 1:
        torch.distributed.all_reduce(sums.sums)  # global metrics, not rank 0's share
        slowest = torch.tensor([elapsed], dtype=torch.float64, device=sums.sums.device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        elapsed = float(slowest)
    totals = sums.totals()
    metrics = {"epoch": epoch, **{name: totals[name] for name in sums.names},
               "views_per_s": totals["views"] / max(elapsed, 1e-9), "epoch_time_s": elapsed,
               "steps": int(totals["steps"]) // world}
    return metrics, totals["nonfinite"] == 0


def record_failure(run: RunFolder, rank: int, message: str, paused: int | None = None) -> None:
    """A failure no restart of the workers can fix, or (PAUSED) the end of the run at a sweep's rung
    epoch: rank 0 leaves it for the driver, which reports it in one line (or pauses the trial); the
    workers then end normally, so Ray Train does not restart them."""
    if rank == 0:
        run.write_text(FAILURE_FILE, json.dumps({"error": message.replace(MARKER, ""),
                                                 **({"paused": paused} if paused is not None else {})}))


class EpochLog:
    """Rank 0's TensorBoard events, metrics.jsonl and epoch line; every rank's report to Ray."""

    LOGGED = ("epoch", "steps")  # kept in metrics.jsonl, not drawn in TensorBoard

    def __init__(self, run: RunFolder, rank: int, epochs: int, start: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.rank, self.epochs = run, rank, epochs
        self.writer = None
        if rank != 0:
            return
        if run.remote:  # the URI holds the earlier events; this writer adds a file of its own
            shutil.rmtree(run.local / "tb", ignore_errors=True)
            run.pull("metrics.jsonl")
        self.forget_after(start)
        # On a resume, TensorBoard hides the events a cut-off attempt logged past the checkpoint.
        self.writer = SummaryWriter(str(run.local / "tb"), purge_step=start + 1 if start else None)

    def forget_after(self, epoch: int) -> None:
        """Drop metrics.jsonl's lines of epochs after `epoch`: a resumed run logs them again."""
        path = self.run.local / METRICS.name
        if not path.exists():
            return
        data = path.read_bytes()
        lines = [line for line in kept.parse(METRICS, data, self.run) if line["epoch"] <= epoch]
        text = "".join(json.dumps(line) + "\n" for line in lines)
        if text.encode() != data:
            atomic.write_text(path, text)
            self.run.push(METRICS.name)

    def diverged(self, epoch: int) -> None:
        """A loss that became NaN or infinite ends the run (not retried: the same data would diverge again)."""
        record_failure(self.run, self.rank, f"the loss became NaN or infinite in epoch {epoch}: lower --lr or check "
                                            f"the data; the last good checkpoint in {self.run} is kept")
        self.close()

    def write(self, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        done = metrics["epoch"]
        for key, value in metrics.items():
            if key not in self.LOGGED:
                self.writer.add_scalar(f"pretrain/{key}", value, done)
        self.writer.flush()
        with open(self.run.local / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        self.run.push("metrics.jsonl", "tb")
        shown = " ".join(f"{k.replace('_', '-')} {v:.4g}" for k, v in metrics.items()
                         if k not in self.LOGGED and k not in ("views_per_s", "epoch_time_s", "checkpoint_s"))
        print(f"epoch {done}/{self.epochs} {shown} {metrics['views_per_s']:.0f} views/s")

    def event(self, event: dict[str, Any] | None) -> None:
        """A restart or a resize (`rrdist.train.position.restart_event`): a line of metrics.jsonl (with
        "event"), TensorBoard's run/workers and run/steps_redone at the epoch it resumed in, and a line."""
        if self.writer is None or event is None:
            return
        at = event["epoch"] + 1
        self.writer.add_scalar("run/workers", event["workers"], at)
        if event["steps_redone"] is not None:
            self.writer.add_scalar("run/steps_redone", event["steps_redone"], at)
        self.writer.add_text("run/events", json.dumps(event), at)
        self.writer.flush()
        with open(self.run.local / "metrics.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")
        self.run.push("metrics.jsonl", "tb")
        redone = event["steps_redone"] if event["steps_redone"] is not None else "unknown"
        print(f"{event['event']}: {event['workers_before']} -> {event['workers']} workers, from epoch {at} step "
              f"{event['step']}, {redone} steps redone")

    def show_views(self, sample, mean, std) -> None:
        """A grid in TensorBoard: each row a training image, then its views as the method sees them."""
        if self.writer is None or sample is None:
            return
        from torchvision.utils import make_grid

        images, views = sample
        size = views.shape[-1]
        originals = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float() / 255, size=(size, size))
        shown = views.cpu() * torch.tensor(std).view(1, 1, 3, 1, 1) + torch.tensor(mean).view(1, 1, 3, 1, 1)
        rows = torch.cat([originals.cpu()[:, None], shown.clamp(0, 1)], dim=1)  # [n, 1 + k, 3, S, S]
        grid = make_grid(rows.flatten(0, 1), nrow=rows.shape[1], padding=2)
        self.writer.add_image("pretrain/views", grid, 0)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def report(metrics: dict[str, Any], state: dict[str, Any] | None, rank: int, name: str | None = None,
           keep: RunFolder | None = None) -> None:
    """The run's report on every rank (session.py); with `state` (a checkpoint epoch), rank 0 attaches its
    checkpoint, in a folder called `name` (default epoch_NNNN). `keep`: the run folder, where rank 0 puts
    the checkpoint itself (Ray Train's local mode and a trial's own process keep none; a resume finds it
    there)."""
    from rrdist.train import session
    from rrdist.train.checkpoint import save_state

    if state is None:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_state(Path(tmp), **state)
        name = name or f"epoch_{metrics['epoch']:04d}"
        if keep is not None and rank == 0:  # before Tune hears of the epoch: its scheduler may end the trial there
            keep_checkpoint(keep, Path(tmp), name)
        session.report(metrics, tmp if rank == 0 else None, name)


def keep_checkpoint(run: RunFolder, source: Path, name: str, newest: int = 2) -> None:
    """A checkpoint folder put whole into the run's train/ (copied beside, then renamed), and all but the
    `newest` checkpoints there removed, as Ray Train keeps them."""
    train = run.local / "train"
    partial = train / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    os.replace(partial, train / name)
    run.push(f"train/{name}")
    for old in sorted(p.name for p in train.iterdir() if p.is_dir() and p.name.startswith("epoch_"))[:-newest]:
        shutil.rmtree(train / old, ignore_errors=True)
