"""A worker's training objects: the method on its device, its optimizer, resumed, wrapped for DDP."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from rrdist.config import PretrainConfig
from rrdist.storage import RunFolder


class Training(NamedTuple):
    method: Any  # the rrdist.methods.base.Method
    model: torch.nn.Module  # what the step calls: the method, DDP-wrapped when needed
    optimizer: torch.optim.Optimizer | None  # None: nothing to train
    start_epoch: int  # the first epoch to train (counted from 0)
    monitor_state: dict[str, dict[str, Any]]  # each monitor's saved state, by name ({} on a fresh start)
    start_step: int = 0  # steps of start_epoch already done (a checkpoint inside the epoch)
    sums: torch.Tensor | None = None  # that epoch's running sums (rrdist.train.step.EpochSums)
    saved_workers: int = 0  # the worker count that wrote the checkpoint (0: a fresh start)


def build_training(cfg: PretrainConfig, num_classes: int, run: RunFolder, rank: int, world: int,
                   device: torch.device) -> Training:
    """The method on its device, its optimizer, resumed from the latest checkpoint, wrapped for DDP."""
    from rrdist.collective import convert_global_batchnorm
    from rrdist.methods import build_method
    from rrdist.train import session
    from rrdist.train.resume import resume_state

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    method = build_method(cfg, num_classes)
    method = method.to(memory_format=torch.channels_last)  # the views come channels-last too
    if cfg.precision == "fp64":  # float64 throughout: what two data-parallel layouts compute, without rounding noise
        method = method.double()
    if cfg.sync_bn and world > 1:  # BatchNorm over the global batch, as one process would compute it
        convert_global_batchnorm(method)  # in place: parameters, buffers and checkpoint keys unchanged
    optimizer = method.configure_optimizer() if method.trainable else None
    start_epoch, monitor_state, start_step, sums, saved_workers = 0, {}, 0, None, 0
    state = resume_state(session.latest_checkpoint(), run, announce=rank == 0)
    if state is not None:
        monitor_state, start_step, sums = state.get("monitors", {}), int(state.get("step", 0)), state.get("sums")
        method.load_state_dict(state["method"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, saved_workers = int(state["epoch"]), int(state.get("workers", 1))
    if cfg.compile:
        method.backbone.compile()  # in place: parameter names (and checkpoints) stay as they are
    # Global BatchNorm keeps every worker's running statistics equal: no need for DDP to broadcast them.
    ddp = {no_buffer_broadcast(): False} if cfg.sync_bn else {}
    distributed = (world > 1 or cfg.use_gpu) and method.trainable
    model = session.prepare_model(method, device, ddp) if distributed else method
    if optimizer is not None:
        optimizer_to(optimizer, device)
    return Training(method, model, optimizer, start_epoch, monitor_state, start_step, sums, saved_workers)


def no_buffer_broadcast() -> str:
    """DDP's option that stops the per-step broadcast of rank 0's buffers (renamed in torch 2.15)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    return "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move optimizer state loaded on the CPU to the training device."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
