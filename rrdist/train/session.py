"""The loop's one door to the Ray it runs under.

A run trains either on Ray Train workers (a TorchTrainer, or Ray Train's local mode for
`--in-process`), or, for a one-worker sweep trial, in the Tune trial's own process: there no Ray
Train controller or worker process is started (two cold Python processes, most of a trial's start),
the loop reports each epoch to Tune and keeps its checkpoints in the run folder itself.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

_IN_TRIAL = False  # the loop runs in a Tune trial's own process (one trial at a time per process)


@contextlib.contextmanager
def tune_trial():
    """The loop in this block runs as the only worker of a Tune trial, reporting to Tune."""
    global _IN_TRIAL
    _IN_TRIAL = True
    try:
        yield
    finally:
        _IN_TRIAL = False


def in_trial() -> bool:
    return _IN_TRIAL


def rank_and_world() -> tuple[int, int]:
    if _IN_TRIAL:
        return 0, 1
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def device(use_gpu: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if _IN_TRIAL:  # Tune has set CUDA_VISIBLE_DEVICES to the trial's own GPU
        return torch.device("cuda", 0)
    import ray.train.torch

    return ray.train.torch.get_device()


def latest_checkpoint():
    """Ray Train's latest checkpoint of the run; in a trial's process none (the loop's own, in the run
    folder, are found by resume.resume_state)."""
    if _IN_TRIAL:
        return None
    import ray.train

    return ray.train.get_checkpoint()


def prepare_model(model: torch.nn.Module, device: torch.device, ddp_kwargs: dict[str, Any]) -> torch.nn.Module:
    """The model on its device, wrapped for DDP when there are several workers."""
    if _IN_TRIAL:
        return model.to(device)
    import ray.train.torch

    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)


def report(metrics: dict[str, Any], folder: str | None = None, name: str | None = None) -> None:
    """One report of the run: Ray Train's (with the checkpoint in `folder`, on rank 0), or in a trial's
    process Tune's, epochs only: a checkpoint inside an epoch has no figures for a scheduler to judge."""
    if _IN_TRIAL:
        if not metrics.get("inside_epoch"):
            from ray import tune

            tune.report(metrics)
        return
    import ray.train

    if folder is None and name is None:
        ray.train.report(metrics)
        return
    checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def drained() -> bool:
    """Whether Ray Train reports that a node of this run is being drained (a barrier over the workers:
    every worker calls it at the same steps)."""
    if _IN_TRIAL or os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1") == "0":
        return False
    import ray.train

    get = getattr(ray.train, "get_preemption_info", None)
    return get is not None and get() is not None
