"""The Ray Train worker loop: wires data, method, monitors, optimizer, logging and checkpoints; nothing else."""

from __future__ import annotations

import time
from typing import Any

import torch

from rrdist import startup
from rrdist.collective import set_global_batch
from rrdist.config import PretrainConfig
from rrdist.data.loader import image_loader
from rrdist.data.worker_data import WorkerData
from rrdist.errors import TrainingError
from rrdist.models.backbone_file import BACKBONE_FILE, input_spec, save_backbone
from rrdist.monitors import MonitorContext, adopt, build_monitors
from rrdist.progress import Progress
from rrdist.storage import CONFIG_FILE, RunFolder
from rrdist.train import session
from rrdist.train.batches import TrainingImages, ViewBatches, build_augment, set_kernel_threads
from rrdist.train.epoch_log import FAILURE_FILE, EpochLog, epoch_metrics, record_failure, report
from rrdist.train.checkpoint import checkpoint_name
from rrdist.train.hooks import StepHook
from rrdist.train.logs import quiet_ray_logs
from rrdist.train.interruptions import Interruptions, Stopped
from rrdist.train.sigterm import WATCHING
from rrdist.train.position import Position, read_position, restart_event
from rrdist.train.setup import Training, build_training
from rrdist.train.step import EpochSums, TrainStep, train_epoch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """loop_config: "config" (PretrainConfig), "run" (the run folder's location), "data" (WorkerData),
    "monitors" (the driver's monitor registry), and the test hooks "fault" and "trace"."""
    quiet_ray_logs()
    adopt(loop_config["monitors"])
    cfg, run, data = loop_config["config"], RunFolder(loop_config["run"]), loop_config["data"]
    rank, world = session.rank_and_world()
    startup.start("worker", run=run.name, rank=rank)
    set_global_batch(cfg.batch_size)  # the shares of every step's global batch (uneven where N does not divide M)
    device = session.device(cfg.use_gpu)
    try:
        training = build_training(cfg, data.num_classes, run, rank, world, device)
    except TrainingError as e:  # no checkpoint to continue from: restarting the workers cannot help
        return record_failure(run, rank, str(e))
    startup.mark("model", run=run.name, rank=rank)
    if rank == 0:  # the run has started: its settings (a resume's new --epochs) are the saved ones now
        run.write_text(CONFIG_FILE, cfg.to_yaml())
        run.delete(FAILURE_FILE)
    stage_data(data, rank)
    torch.set_num_threads(cfg.cpus_per_worker)
    set_kernel_threads(cfg.cpus_per_worker)
    hook = StepHook.from_loop_config(loop_config, rank, run.local, world)
    worker = Worker(cfg, run, data, training, rank, world, device, hook, loop_config.get("stop_file"),
                    keep=run if loop_config.get("in_process") or session.in_trial() else None)  # Ray Train keeps none there
    startup.mark("monitors", run=run.name, rank=rank)
    method, start = training.method, training.start_epoch
    announce(cfg, method, start, training.start_step, rank)
    announce_nodes(rank, world, device)
    worker.log_restart()
    WATCHING.set()  # SIGTERM now asks for a checkpoint and a stop
    saved = True  # the run starts from its checkpoint (or from nothing)
    for epoch in range(start, cfg.epochs if method.trainable else 0):
        first = training.start_step if epoch == start else 0
        try:
            if saved and worker.interruptions.stop_file:
                worker.interruptions.epoch = epoch
                worker.interruptions.stop_at_epoch_start()
            metrics = worker.train(epoch, first, training.sums if first else None)
        except Stopped as e:  # the whole run ends here (a batch job's allocation): no restart
            worker.close()
            return record_failure(run, rank, str(e))
        if metrics is None:
            return worker.log.diverged(epoch + 1)
        worker.log.write(metrics)
        if epoch == 0:
            worker.log.show_views(worker.batches.sample, data.mean, data.std)
        pause = epoch + 1 == loop_config.get("pause_epoch") and epoch + 1 < cfg.epochs
        due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or pause
        report(metrics, worker.state(epoch + 1) if due else None, rank, checkpoint_name(epoch + 1, worker.taken),
               worker.keep)
        if due:
            worker.interruptions.saved()
        saved = due
        if pause:  # a sweep's rung: end here, with its checkpoint, before a step of the next epoch
            return worker.pause(epoch + 1)
    WATCHING.clear()
    worker.finish(start)


class Worker:
    """One worker's training objects, built once: what each epoch and each checkpoint uses."""

    def __init__(self, cfg: PretrainConfig, run: RunFolder, data: WorkerData, training: Training, rank: int,
                 world: int, device: torch.device, hook: StepHook | None, stop_file: str | None = None,
                 keep: RunFolder | None = None) -> None:
        self.cfg, self.run, self.data, self.training = cfg, run, data, training
        self.method, self.optimizer = training.method, training.optimizer
        self.rank, self.world, self.device, self.hook = rank, world, device, hook
        self.batches = view_batches(cfg, data, self.method, rank, world, device, training.start_epoch,
                                    training.start_step)
        startup.mark("loader", rank=rank)
        context = MonitorContext(self.method.backbone, data, device, cfg.seed, cfg.epochs)
        self.monitors = build_monitors(cfg.monitors, context)
        for name, state in training.monitor_state.items():
            if name in self.monitors:  # a monitor turned on at a resume starts afresh
                self.monitors[name].load_state_dict(state)
        self.step = TrainStep(training.model, self.optimizer, cfg.precision)
        self.log = EpochLog(run, rank, cfg.epochs, training.start_epoch)
        self.taken = set(run.subfolders("train"))  # read by every rank before any writes a checkpoint
        self.keep = keep  # the run folder, where the loop keeps its checkpoints itself (Ray Train's local mode)
        self.position = Position(run.local, world) if rank == 0 else None
        self.interruptions = Interruptions(cfg.checkpoint_minutes, cfg.check_every, world, rank, device,
                                           self.save_inside, self.position, stop_file)
        self.epoch, self.sums = 0, None
        self.checkpoint_s = 0.0  # time spent writing checkpoints inside the epoch

    def log_restart(self) -> None:
        """Rank 0: a start that redoes steps, or runs on another worker count, is logged as an event."""
        if self.rank == 0:
            t = self.training
            self.log.event(restart_event(read_position(self.run.local), t.start_epoch, t.start_step,
                                         len(self.batches.loader), t.saved_workers, self.world))

    def close(self) -> None:
        if self.position is not None:
            self.position.close()

    def pause(self, epoch: int) -> None:
        """End the run after `epoch` (its checkpoint is saved): a sweep's rung."""
        self.close()
        startup.mark("end", run=self.run.name, rank=self.rank)
        record_failure(self.run, self.rank, f"paused at the rung after epoch {epoch}", paused=epoch)

    def finish(self, start: int) -> None:
        """The run's end: logs closed, and rank 0 saves the backbone with what its inputs are."""
        self.log.close()
        self.close()
        startup.mark("end", run=self.run.name, rank=self.rank)
        if self.rank == 0:
            cfg, method = self.cfg, self.method
            save_backbone(self.run.local, method.backbone, cfg.to_dict(), max(cfg.epochs, start) if method.trainable
                          else 0, input_spec(self.data.image_size, self.data.mean, self.data.std))
            self.run.push(BACKBONE_FILE, "tb")

    def train(self, epoch: int, first_step: int = 0, saved_sums: torch.Tensor | None = None) -> dict | None:
        """Epoch `epoch` (from 0) from step `first_step` on; its figures, or None if a loss was not finite."""
        self.method.on_epoch_start(epoch, self.optimizer, TrainingImages(self.data, self.device),
                                   resumed=first_step > 0)
        self.training.model.train()
        began = time.perf_counter()
        self.epoch, self.sums = epoch, EpochSums(self.method.metric_names, self.device)
        self.checkpoint_s = 0.0
        self.interruptions.epoch = epoch
        if saved_sums is not None and self.rank == 0:  # the saved sums are every worker's together
            self.sums.restore(saved_sums, self.training.saved_workers, self.world)
        if self.hook is not None:
            self.hook.start_epoch(epoch)
        steps = len(self.batches.loader)
        progress = Progress(f"epoch {epoch + 1}/{self.cfg.epochs}", steps) if self.rank == 0 else None
        train_epoch(self.step, self.batches.epoch(epoch, first_step), self.sums, self.hook, progress,
                    list(self.monitors.values()), first_step, self.interruptions, steps)
        if self.hook is not None:
            self.hook.end_epoch()
        metrics, finite = epoch_metrics(self.sums, time.perf_counter() - began, self.world, epoch + 1)
        if not finite:
            return None
        metrics["checkpoint_s"] = self.checkpoint_s  # what the checkpoints inside the epoch cost
        metrics.update(self.method.epoch_metrics())
        for monitor in self.monitors.values():
            metrics.update(monitor.epoch_end(epoch + 1))
        return metrics

    def state(self, epoch: int, step: int = 0, sums: torch.Tensor | None = None) -> dict[str, Any]:
        """What a checkpoint after `epoch` completed epochs (and `step` steps of the next) holds."""
        return dict(method=self.method, optimizer=self.optimizer, epoch=epoch, config=self.cfg.to_dict(),
                    monitors={name: m.state_dict() for name, m in self.monitors.items()}, step=step, sums=sums,
                    workers=self.world)

    def save_inside(self, done: int) -> None:
        """A checkpoint after `done` steps of the current epoch (reported without epoch figures); its
        running sums are every worker's together (rank 0 takes them back on a resume)."""
        began = time.perf_counter()
        sums = self.sums.sums.clone()
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        state = self.state(self.epoch, done, sums)
        report({"inside_epoch": 1, "epoch": self.epoch, "step": done}, state, self.rank,
               checkpoint_name(self.epoch, self.taken, done), self.keep)
        self.checkpoint_s += time.perf_counter() - began


def view_batches(cfg: PretrainConfig, data: WorkerData, method, rank: int, world: int, device: torch.device,
                 start: int, start_step: int = 0) -> ViewBatches:
    """The method's views of this worker's share of every global batch, from step `start_step` of
    epoch `start` on."""
    loader = image_loader(data.labelled if method.needs_labels else data.train, cfg.batch_size, train=True,
                          num_workers=cfg.loader_workers, seed=cfg.seed, rank=rank, workers=world, device=device,
                          indices=True, view_size=data.image_size)
    loader.resume_at(start, start_step)
    method.generator = torch.Generator(device=device)  # the draws every worker shares, reseeded every step
    augment = build_augment(method.augmentation, data.image_size, data.mean, data.std, loader.sizes is not None)
    batches = ViewBatches(loader, augment, method.views_per_image, cfg.seed, device, method.generator,
                          method.targets if method.needs_indices else None, cfg.precision)
    batches.keep_sample = rank == 0 and start == 0  # a picture of the views, once per run
    return batches


def stage_data(data: WorkerData, rank: int) -> None:
    """Every node copies the shared data (a URI) to its local disk once."""
    if data.uri:
        from rrdist.data.staging import stage

        stage(data.uri, data.dataset, data.root, log=print if rank == 0 else (lambda *a: None))


def announce_nodes(rank: int, world: int, device: torch.device) -> None:
    """One line of where the workers run (Ray Train's own lines about it stay out of the terminal): a
    gather of each worker's node address, once per start of the group."""
    if world == 1:
        return
    from ray.util import get_node_ip_address

    mine = torch.zeros(64, dtype=torch.uint8, device=device)
    address = get_node_ip_address().encode()[:64]
    mine[:len(address)] = torch.tensor(list(address), dtype=torch.uint8, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    if rank != 0:
        return
    nodes: dict[str, list[int]] = {}
    for r, t in enumerate(every):
        nodes.setdefault(bytes(t.cpu().tolist()).rstrip(b"\0").decode(), []).append(r)
    print(f"{world} workers on {len(nodes)} node(s): " + ", ".join(
        f"{node} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})" for node, ranks in nodes.items()))


def announce(cfg, method, start: int, step: int, rank: int) -> None:
    if rank != 0:
        return
    if not method.trainable:
        print(f"{cfg.method}: nothing to train, saving the initial backbone")
    elif start >= cfg.epochs:
        print(f"already complete: {start} of {cfg.epochs} epochs done")
    elif step > 0:
        print(f"resuming from epoch {start}, step {step} of epoch {start + 1}")
    elif start > 0:
        print(f"resuming from epoch {start}")
