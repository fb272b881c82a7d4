"""The Ray Train worker loop: wires data, method, monitors, optimizer, logging and checkpoints; nothing else."""

from __future__ import annotations

import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from rrdist.config import PretrainConfig
from rrdist.data.loader import image_loader
from rrdist.data.worker_data import WorkerData
from rrdist.errors import TrainingError
from rrdist.models.backbone_file import BACKBONE_FILE, save_backbone
from rrdist.monitors import MonitorContext, adopt, build_monitors
from rrdist.progress import Progress
from rrdist.storage import RunFolder
from rrdist.train.batches import TrainingImages, ViewBatches, build_augment, set_kernel_threads
from rrdist.train.epoch_log import EpochLog, epoch_metrics, record_failure, report
from rrdist.train.checkpoint import checkpoint_name
from rrdist.train.hooks import StepHook
from rrdist.train.logs import quiet_ray_logs
from rrdist.train.setup import build_training
from rrdist.train.step import EpochSums, TrainStep, train_epoch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """loop_config: "config" (PretrainConfig), "run" (the run folder's location), "data" (WorkerData),
    "monitors" (the driver's monitor registry), and the test hooks "fault" and "trace"."""
    quiet_ray_logs()
    adopt(loop_config["monitors"])
    cfg, run, data = loop_config["config"], RunFolder(loop_config["run"]), loop_config["data"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    try:
        training = build_training(cfg, data.num_classes, run, rank, world, device)
    except TrainingError as e:  # no checkpoint to continue from: restarting the workers cannot help
        return record_failure(run, rank, str(e))
    method, optimizer, start = training.method, training.optimizer, training.start_epoch
    stage_data(data, rank)
    torch.set_num_threads(cfg.cpus_per_worker)
    set_kernel_threads(cfg.cpus_per_worker)
    batches = view_batches(cfg, data, method, rank, world, device, start)
    monitors = build_monitors(cfg.monitors, MonitorContext(method.backbone, data, device, cfg.seed, cfg.epochs))
    for name, state in training.monitor_state.items():
        if name in monitors:  # a monitor turned on at a resume starts afresh
            monitors[name].load_state_dict(state)
    step = TrainStep(training.model, optimizer, cfg.precision)
    hook = StepHook.from_loop_config(loop_config, rank, run.local)
    log = EpochLog(run, rank, cfg.epochs, start)
    taken = set(run.subfolders("train"))  # read by every rank before any writes a checkpoint
    announce(cfg, method, start, rank)
    for epoch in range(start, cfg.epochs if method.trainable else 0):
        method.on_epoch_start(epoch, optimizer, TrainingImages(data, device))
        training.model.train()
        began = time.perf_counter()
        if hook is not None:
            hook.start_epoch(epoch)
        progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", len(batches.loader)) if rank == 0 else None
        sums = train_epoch(step, batches.epoch(epoch), EpochSums(method.metric_names, device), hook, progress,
                           list(monitors.values()))
        if hook is not None:
            hook.end_epoch()
        metrics, finite = epoch_metrics(sums, time.perf_counter() - began, world, epoch + 1)
        if not finite:
            return log.diverged(epoch + 1)
        metrics.update(method.epoch_metrics())
        for monitor in monitors.values():
            metrics.update(monitor.epoch_end(epoch + 1))
        log.write(metrics)
        if epoch == 0:
            log.show_views(batches.sample, data.mean, data.std)
        due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        state = dict(method=method, optimizer=optimizer, epoch=epoch + 1, config=cfg.to_dict(),
                     monitors={name: m.state_dict() for name, m in monitors.items()})
        report(metrics, state if due else None, rank, checkpoint_name(epoch + 1, taken))
    log.close()
    if rank == 0:
        save_backbone(run.local, method.backbone, cfg.to_dict(), max(cfg.epochs, start) if method.trainable else 0)
        run.push(BACKBONE_FILE, "tb")


def view_batches(cfg: PretrainConfig, data: WorkerData, method, rank: int, world: int, device: torch.device,
                 start: int) -> ViewBatches:
    """The method's views of this worker's share of every global batch, from epoch `start` on."""
    loader = image_loader(data.labelled if method.needs_labels else data.train, cfg.batch_size, train=True,
                          num_workers=cfg.loader_workers, seed=cfg.seed, rank=rank, workers=world, device=device,
                          indices=True)
    loader.next_epoch = start
    method.generator = torch.Generator(device=device)  # the draws every worker shares, reseeded every step
    augment = build_augment(method.augmentation, data.image_size, data.mean, data.std)
    batches = ViewBatches(loader, augment, method.views_per_image, cfg.seed, device, method.generator,
                          method.targets if method.needs_indices else None, cfg.precision)
    batches.keep_sample = rank == 0 and start == 0  # a picture of the views, once per run
    return batches


def stage_data(data: WorkerData, rank: int) -> None:
    """Every node copies the shared data (a URI) to its local disk once."""
    if data.uri:
        from rrdist.data.staging import stage

        stage(data.uri, data.dataset, data.root, log=print if rank == 0 else (lambda *a: None))


def announce(cfg, method, start: int, rank: int) -> None:
    if rank != 0:
        return
    if not method.trainable:
        print(f"{cfg.method}: nothing to train, saving the initial backbone")
    elif start >= cfg.epochs:
        print(f"already complete: {start} of {cfg.epochs} epochs done")
    elif start > 0:
        print(f"resuming from epoch {start}")
