"""The Ray Train worker loop: wires data, method, optimizer, logging and checkpoints; nothing else."""

from __future__ import annotations

import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from rrdist.data.loader import image_loader
from rrdist.methods import config_from_dict
from rrdist.models.backbone_file import BACKBONE_FILE, save_backbone
from rrdist.progress import Progress
from rrdist.storage import RunFolder
from rrdist.train.batches import TrainingImages, ViewBatches, build_augment, set_kernel_threads
from rrdist.train.epoch_log import EpochLog, epoch_metrics, report
from rrdist.train.hooks import StepHook
from rrdist.train.knn import KnnMonitor
from rrdist.train.logs import quiet_ray_logs
from rrdist.train.probe import OnlineProbe
from rrdist.train.setup import build_training
from rrdist.train.step import EpochSums, TrainStep, train_epoch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    quiet_ray_logs()
    cfg, run, data = config_from_dict(loop_config["config"]), RunFolder(loop_config["run"]), loop_config["data"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    method, model, optimizer, start = build_training(cfg, data["num_classes"], run, rank, world, device)
    stage_data(data, rank)
    torch.set_num_threads(cfg.cpus_per_worker)
    set_kernel_threads(cfg.cpus_per_worker)
    loader = image_loader(data["labelled"] if method.needs_labels else data["train"], cfg.batch_size, train=True,
                          num_workers=cfg.loader_workers, seed=cfg.seed, rank=rank, workers=world, device=device,
                          indices=True)
    loader.next_epoch = start
    method.generator = torch.Generator(device=device)  # the draws every worker shares, reseeded every step
    batches = ViewBatches(loader, build_augment(method.augmentation, data), method.views_per_image, cfg.seed, device,
                          method.generator, method.targets if method.needs_indices else None, cfg.precision)
    probe = OnlineProbe(method.backbone, method.backbone.feature_size, data["num_classes"], device) \
        if cfg.online_probe else None
    step = TrainStep(model, optimizer, cfg.precision, probe)
    knn = KnnMonitor(data, device, cfg.seed) if cfg.knn_every else None
    hook = StepHook.from_loop_config(loop_config, rank, run.local)
    log = EpochLog(run, rank, cfg.epochs, start)
    batches.keep_sample = rank == 0 and start == 0  # a picture of the views, once per run
    announce(cfg, method, start, rank)
    for epoch in range(start, cfg.epochs if method.trainable else 0):
        method.on_epoch_start(epoch, optimizer, TrainingImages(data, device))
        model.train()
        began = time.perf_counter()
        if hook is not None:
            hook.start_epoch(epoch)
        progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", len(loader)) if rank == 0 else None
        sums = train_epoch(step, batches.epoch(epoch), EpochSums(method.metric_names, device), hook, progress)
        if hook is not None:
            hook.end_epoch()
        metrics, finite = epoch_metrics(sums, probe, time.perf_counter() - began, world, epoch + 1)
        if not finite:
            return log.diverged(epoch + 1)
        metrics.update(method.epoch_metrics())
        if knn is not None and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            metrics["knn_acc"] = knn.accuracy(method.backbone)
        log.write(metrics)
        if epoch == 0:
            log.show_views(batches.sample, data["mean"], data["std"])
        due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        report(metrics, dict(method=method, optimizer=optimizer, epoch=epoch + 1, config=cfg.to_dict()) if due else None,
               rank)
    log.close()
    if rank == 0:
        save_backbone(run.local, method.backbone, cfg.to_dict(), max(cfg.epochs, start) if method.trainable else 0)
        run.push(BACKBONE_FILE, "tb")


def stage_data(data: dict[str, Any], rank: int) -> None:
    """Every node copies the shared data (a URI) to its local disk once."""
    if data.get("uri"):
        from rrdist.data.staging import stage

        stage(data["uri"], data["dataset"], data["root"], log=print if rank == 0 else (lambda *a: None))


def announce(cfg, method, start: int, rank: int) -> None:
    if rank != 0:
        return
    if not method.trainable:
        print(f"{cfg.method}: nothing to train, saving the initial backbone")
    elif start >= cfg.epochs:
        print(f"already complete: {start} of {cfg.epochs} epochs done")
    elif start > 0:
        print(f"resuming from epoch {start}")
