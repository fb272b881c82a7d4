"""The Ray Train worker loop: wires loader, views, method, optimizer, logging and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rrdist.config import PretrainConfig
from rrdist.errors import MARKER, TrainingError
from rrdist.storage import RunFolder

FAILURE_FILE = "failure.json"  # a failure no restart can fix, for the driver to report

# Sums kept on the device during an epoch and read once at its end (no per-step host sync).
LOSS, ACC, STEPS, NONFINITE, VIEWS = range(5)


class TrainingImages:
    """The un-augmented training images, for methods that look at all of them (DeepCluster)."""

    def __init__(self, data: dict[str, Any], device: torch.device) -> None:
        self.data, self.device = data, device

    @property
    def count(self) -> int:
        from ffcv.reader import Reader

        return int(Reader(str(self.data["train"])).num_samples)

    def features(self, backbone: torch.nn.Module) -> torch.Tensor:
        """Features [N, D] of every training image in file order (eval mode, no augmentation)."""
        from rrdist.eval.features import extract

        was_training = backbone.training
        try:
            return extract(backbone, Path(self.data["train"]), self.data, self.device)[0]
        finally:
            backbone.train(was_training)


def build_augment(kind: str, data: dict[str, Any]):
    """The views a method trains on, with the dataset's image size and normalisation."""
    from rrdist.data.augment import KViewAugment
    from rrdist.data.crop_flip import CropFlip

    kinds = {"kview": KViewAugment, "crop_flip": CropFlip}
    return kinds[kind](data["image_size"], tuple(data["mean"]), tuple(data["std"]))


def set_kernel_threads(n: int) -> None:
    """The fused CPU augmentation kernel uses numba's thread pool: keep it to this worker's CPUs."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def train_epoch(model: torch.nn.Module, loader, augment, optimizer: torch.optim.Optimizer, K: int,
                seed: int, epoch: int, device: torch.device, generator: torch.Generator | None = None,
                fault: str | None = None, trace: list[dict] | None = None, precision: str = "fp32",
                on_step=None, targets=None, probe=None) -> torch.Tensor:
    """One pass over the loader (batches of images, labels, image indices); returns the device-side
    sums [loss, acc, steps, nonfinite, views].

    Each image's views are keyed by (seed, epoch, image index); `generator`, the method's draws that
    every worker shares (negatives), is reseeded by (seed, epoch, step). `targets(labels, indices)`,
    when given, makes each step's targets.
    """
    from rrdist.data.keyed import ImageDraws, step_seed

    sums = torch.zeros(5, device=device, dtype=torch.float64)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for step, (images, labels, indices) in enumerate(loader):
        if on_step is not None:
            on_step(step)
        if generator is not None:
            generator.manual_seed(step_seed(seed, epoch, step))
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        raw_labels = labels
        if targets is not None:
            labels = targets(labels, indices.to(device, non_blocking=True))
        views = augment(images, K, ImageDraws(seed, epoch, indices))
        if precision == "fp64":
            views = views.double()
        with autocast:
            loss, metrics = model(views, labels)
        if fault == "nan-loss":  # test hook: what a diverged run looks like
            loss = loss * float("nan")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if probe is not None:
            probe.step(raw_labels)
        sums[LOSS] += metrics["loss"]
        sums[ACC] += metrics["pair_acc"]
        sums[STEPS] += 1
        sums[NONFINITE] += ~torch.isfinite(loss.detach())
        sums[VIEWS] += views.shape[0]
        if trace is not None:  # test hook (syncs with the device): the step's loss share, and its views
            m = images.shape[0]
            trace.append({"loss": float(metrics["loss"]), "images": indices.tolist(),
                          "views": views.detach().double().reshape(-1, m, views[0].numel()).sum(2).t().tolist()})
    return sums


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from torch.utils.tensorboard import SummaryWriter

    from rrdist.collective import convert_global_batchnorm
    from rrdist.data.loader import image_loader
    from rrdist.methods import build_method
    from rrdist.train.checkpoint import BACKBONE_FILE, save_backbone, save_state
    from rrdist.train.logs import quiet_ray_logs

    quiet_ray_logs()

    cfg = PretrainConfig.from_dict(loop_config["config"])
    run = RunFolder(loop_config["run"])
    run_dir = run.local  # where this worker writes; a run at a URI gets its files pushed there
    data = loop_config["data"]
    fault = loop_config.get("fault")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    method = build_method(cfg, data["num_classes"])
    method = method.to(memory_format=torch.channels_last)  # the views come channels-last too
    if cfg.precision == "fp64":  # float64 throughout: what two data-parallel layouts compute, without rounding noise
        method = method.double()
    if cfg.sync_bn and world > 1:  # BatchNorm over the global batch, as one process would compute it
        convert_global_batchnorm(method)  # in place: parameters, buffers and checkpoint keys unchanged
    optimizer = method.configure_optimizer()
    start_epoch = 0
    state = resume_state(ray.train.get_checkpoint(), run, announce=rank == 0)
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
    if cfg.compile:
        method.backbone.compile()  # in place: parameter names (and checkpoints) stay as they are
    # Global BatchNorm keeps every worker's running statistics equal: no need for DDP to broadcast them.
    ddp = {no_buffer_broadcast(): False} if cfg.sync_bn else {}
    model = ray.train.torch.prepare_model(method, parallel_strategy_kwargs=ddp) if world > 1 or cfg.use_gpu else method
    optimizer_to(optimizer, device)

    if data.get("uri"):  # every node copies the shared data to its local disk once
        from rrdist.data.staging import stage

        stage(data["uri"], data["dataset"], data["root"], log=print if rank == 0 else (lambda *a: None))
    split = data["labelled"] if method.needs_labels else data["train"]
    loader = image_loader(split, cfg.batch_size, train=True, num_workers=cfg.loader_workers, seed=cfg.seed,
                          rank=rank, workers=world, device=device, indices=True)
    images = TrainingImages(data, device)
    probe = None
    if cfg.online_probe:
        from rrdist.train.probe import OnlineProbe

        probe = OnlineProbe(method.backbone, method.backbone.feature_size, data["num_classes"], device)
    loader.next_epoch = start_epoch
    torch.set_num_threads(cfg.cpus_per_worker)
    set_kernel_threads(cfg.cpus_per_worker)
    augment = build_augment(method.augmentation, data)
    generator = torch.Generator(device=device)  # the draws every worker shares, reseeded every step
    method.generator = generator

    if rank == 0 and run.remote:  # the URI holds the earlier events; this writer adds a file of its own
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        run.pull("metrics.jsonl")
    writer = SummaryWriter(str(run_dir / "tb")) if rank == 0 else None
    if rank == 0 and start_epoch >= cfg.epochs:
        print(f"already complete: {start_epoch} of {cfg.epochs} epochs done")
    elif rank == 0 and start_epoch > 0:
        print(f"resuming from epoch {start_epoch}")
    if not method.trainable and rank == 0:
        print(f"{cfg.method}: nothing to train, saving the initial backbone")
    for epoch in range(start_epoch, cfg.epochs if method.trainable else 0):
        method.on_epoch_start(epoch, optimizer, images)
        model.train()
        start = time.perf_counter()
        kill = worker_kill_hook(fault, rank, epoch, run_dir)
        trace = [] if loop_config.get("trace") else None
        sums = train_epoch(model, loader, augment, optimizer, method.views_per_image, cfg.seed, epoch, device,
                           generator, fault, trace=trace, precision=cfg.precision, on_step=kill,
                           targets=method.targets if method.needs_indices else None, probe=probe)
        if trace is not None:  # test hook: this worker's per-step loss (its share of the global loss)
            Path(loop_config["trace"]).mkdir(parents=True, exist_ok=True)
            (Path(loop_config["trace"]) / f"epoch{epoch + 1}-rank{rank}.json").write_text(json.dumps(trace))
        probe_sums = probe.take_accuracy() if probe is not None else None
        if world > 1:
            torch.distributed.all_reduce(sums)  # global metrics, not rank 0's share
            if probe_sums is not None:
                torch.distributed.all_reduce(probe_sums)
        elapsed = time.perf_counter() - start
        if world > 1:
            elapsed_t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(elapsed_t, op=torch.distributed.ReduceOp.MAX)
            elapsed = float(elapsed_t)
        loss_sum, acc_sum, steps, nonfinite, views = sums.tolist()  # the epoch's one host sync
        if nonfinite > 0:  # not retried: the same data would diverge again
            if rank == 0:
                run.write_text(FAILURE_FILE, json.dumps({"error": (
                    f"the loss became NaN or infinite in epoch {epoch + 1}: lower --lr or check the data; "
                    f"the last good checkpoint in {run} is kept")}))
            return
        done = epoch + 1
        metrics = {"epoch": done, "loss": loss_sum / max(steps, 1), "pair_acc": acc_sum / max(steps, 1),
                   "views_per_s": views / max(elapsed, 1e-9), "epoch_time_s": elapsed, "steps": int(steps) // world,
                   **method.epoch_metrics()}
        if probe_sums is not None:
            correct, counted = probe_sums.tolist()
            metrics["probe_acc"] = correct / max(counted, 1.0)
        if writer is not None:
            for key in ("loss", "pair_acc", "views_per_s", "epoch_time_s", *method.epoch_metrics(),
                        *(["probe_acc"] if probe is not None else [])):
                writer.add_scalar(f"pretrain/{key}", metrics[key], done)
            writer.flush()
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            run.push("metrics.jsonl", "tb")
            print(f"epoch {done}/{cfg.epochs} loss {metrics['loss']:.4f} pair-acc {metrics['pair_acc']:.3f} "
                  f"{metrics['views_per_s']:.0f} views/s")
        if done % cfg.checkpoint_every == 0 or done == cfg.epochs:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_state(Path(tmp), method, optimizer, done, cfg.to_dict())
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{done:04d}")
        else:
            ray.train.report(metrics)
    if rank == 0:
        save_backbone(run_dir, method.backbone, cfg.to_dict(), max(cfg.epochs, start_epoch) if method.trainable else 0)
        writer.close()
        run.push(BACKBONE_FILE, "tb")


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


def resume_state(checkpoint, run: RunFolder, announce: bool = False) -> dict[str, Any] | None:
    """The training state to continue from.

    Ray's latest checkpoint first. When it is unreadable (a truncated file), or when Ray offers
    none although the run folder holds some (a worker died before the controller registered the
    last report), the newest readable checkpoint in the run folder, said in one line. The run
    folder only ever holds this run's checkpoints: a folder with other settings is refused.
    """
    from rrdist.errors import DataError
    from rrdist.train.checkpoint import STATE_FILE, load_state, state_from_bytes

    problem, newer_than = None, None
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as d:
                return load_state(Path(d))
        except DataError as e:
            problem, newer_than = str(e).split(":")[0], Path(checkpoint.path).name
    for folder in reversed(run.subfolders("train")):
        if not folder.startswith("epoch_") or (newer_than is not None and folder >= newer_than):
            continue
        data = run.read_bytes(f"train/{folder}/{STATE_FILE}")
        try:
            state = state_from_bytes(data, f"{run}/train/{folder}") if data is not None else None
        except DataError:
            continue
        if state is None:
            continue
        if announce:
            why = f"{problem}; " if problem else ""
            print(f"[rrdist] {why}resuming from the checkpoint {folder} in the run folder")
        return state
    if problem:
        raise TrainingError(f"{MARKER}no readable checkpoint in {run}/train ({problem}): "
                            f"choose a new --out folder to start again")
    return None


def worker_kill_hook(fault: str | None, rank: int, epoch: int, run_dir: Path):
    """Test hook `kill-worker:RANK:EPOCH:STEP`: that worker kills its own process once, mid-epoch,
    as a lost machine would; a marker file in the run folder keeps the restarted worker alive."""
    if not fault or not fault.startswith("kill-worker:"):
        return None
    _, r, e, s = fault.split(":")
    if int(r) != rank or int(e) != epoch + 1:
        return None
    marker = run_dir / ".fault-kill-worker"

    def maybe_kill(step: int) -> None:
        if step == int(s) and not marker.exists():
            marker.write_text(f"rank {rank} killed itself in epoch {epoch + 1} at step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_kill
