"""The driver side of pretraining: check the run folder, prepare data, build and fit a TorchTrainer."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrdist import kept, startup
from rrdist.config import PretrainConfig
from rrdist.data.worker_data import WorkerData
from rrdist.errors import ConfigError, TrainingError, find_user_message
from rrdist.methods import config_from_yaml_text, method_class
from rrdist.models.backbone_file import BACKBONE_FILE
from rrdist.monitors import MONITORS
from rrdist.storage import CONFIG_FILE, RunFolder, absolute, check_folder, is_uri
from rrdist.train.epoch_log import FAILURE, METRICS
from rrdist.train.interruptions import stop_files
from rrdist.train.resume import RAY_SNAPSHOT

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# Ray's settings for a run, unless the caller set them: in this process and, through the job's runtime
# env, in every Ray process of the job (also on a cluster this command joins).
QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
             "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
             # Ray Train gives a worker group 60 s to start; a busy small machine starting several
             # trials' workers at once (each importing torch) can need more.
             "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
             # Ray Train's controller looks at its workers every 2 s by default: a run's end, a lost
             # worker and each report waited up to that long, against epochs of a second or two on a
             # GPU. A look is one small call per worker.
             POLL: "0.5"}

PRIVATE_RAY = False  # this process started a private local Ray (its CPUs are all there will be)


def init_ray(address: str | None = None) -> None:
    """Join `address` (or $RAY_ADDRESS, as inside a submitted job), else start a private local Ray."""
    for k, v in QUIET_RAY.items():
        os.environ.setdefault(k, v)
    if not address and not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        # Ray's single-machine mode (read when ray is imported): the private Ray, its workers and
        # their ports stay on 127.0.0.1, as with cluster/local.sh.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import logging

    import ray

    from rrdist.train.logs import quiet_local_ray_start

    if ray.is_initialized():
        return
    runtime_env = job_runtime_env(os.environ)
    # Ray's INFO lines in this process ("Started a local Ray instance", "Connected to Ray cluster", Tune's
    # bookkeeping) say nothing the user must act on; its warnings and errors still show.
    quiet = {"runtime_env": runtime_env, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        # The dashboard (on 127.0.0.1 only) serves the State API that Ray Train's placement-group
        # cleaner polls: without it, a run whose controller is killed (a trial stopped by a
        # scheduler) would keep its workers' resources.
        with quiet_local_ray_start():
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
        global PRIVATE_RAY
        PRIVATE_RAY = True


def job_runtime_env(environ) -> dict:
    """What every Ray process of this job starts with: rrdist's setup hook, Ray's settings (the
    caller's where set, else QUIET_RAY's), and the test hooks set for this job (they reach its sweep
    trials)."""
    hooks = {k: environ[k] for k in ("RRDIST_TRACE", startup.LOG) if environ.get(k)}
    settings = {k: environ.get(k, v) for k, v in QUIET_RAY.items()}
    return {"worker_process_setup_hook": "rrdist.train.logs.setup_worker_process", "env_vars": {**hooks, **settings}}


SAVED_CONFIG = kept.Kept(CONFIG_FILE, lambda data: config_from_yaml_text(kept.text_of(data), CONFIG_FILE),
                         "restore it, or choose a new --out folder")


def check_run_folder(cfg: PretrainConfig, run: RunFolder | Path) -> bool:
    """Refuse a run folder that holds a different run; True when it holds this one (resume)."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    old = kept.read(run, SAVED_CONFIG)
    if old is None:
        return False
    diff = cfg.differences(old)
    if diff:
        k = diff[0]
        raise ConfigError(f"{run} holds a run with {k}={old.value(k)!r} (now {cfg.value(k)!r}): "
                          f"use the same settings to resume it, or choose a new --out folder")
    return True


@dataclass
class PretrainResult:
    run_dir: Path  # the run folder, or for a run at a URI its local working copy
    metrics: dict[str, Any]
    resumed: bool


class RungReached(Exception):
    """The run ended, with a checkpoint, at the epoch it was told to pause at (a sweep's rung)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"paused at the rung after epoch {epoch}")
        self.epoch = epoch


def pretrain(cfg: PretrainConfig, address: str | None = None, log=print, callbacks: list | None = None,
             stop_file: str | None = None, pause_epoch: int | None = None, in_trial: bool = False) -> PretrainResult:
    """Fit one pretraining run; `callbacks` are Ray Train callbacks (a Tune trial passes TuneReportCallback);
    `stop_file`: once it exists the workers checkpoint and end the run (as with $RRDIST_STOP_FILE);
    `pause_epoch`: the workers end the run after that epoch and its checkpoint (RungReached), unless it
    is the last; `in_trial`: a one-worker run in this Tune trial's own process, reporting to Tune."""
    cfg.validate()
    if not is_uri(cfg.out):
        check_folder(cfg.out, "--out")
    check_folder(cfg.root, "--root")
    stop_file = stop_files(stop_file)
    run = RunFolder(cfg.out)
    resumed = check_run_folder(cfg, run)
    kept.check(run, METRICS, RAY_SNAPSHOT)  # what the run will read back
    if cfg.in_process and address:
        raise ConfigError(f"--in-process trains in this process, without Ray: drop --address {address}")
    if in_trial and (cfg.workers != 1 or cfg.min_workers):
        raise ConfigError(f"a run in a trial's own process has one worker (got --workers {cfg.workers})")
    if not cfg.in_process:
        check_local_cpus(cfg, address)
    data = worker_data(cfg, log)  # everything is checked before the run folder is written
    if not resumed:  # a resume's settings replace the saved ones once its workers have started (loop.py)
        run.write_text(CONFIG_FILE, cfg.to_yaml())
    if cfg.in_process:
        from rrdist.train.logs import quiet_local_mode

        for k, v in QUIET_RAY.items():  # what Ray's processes get from init_ray, for the loop in this one
            os.environ.setdefault(k, v)
        quiet_local_mode()
    elif not in_trial:
        init_ray(address)
    own = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg.settings).items())
    workers = f"{cfg.min_workers}-{cfg.workers}" if cfg.min_workers else str(cfg.workers)
    workers = "in this process" if cfg.in_process or in_trial else f"{workers} worker(s)"
    log(f"pretraining {cfg.method}/{cfg.backbone} on {cfg.dataset} ({own}), {workers} -> {run}")
    startup.mark("fit", run=run.name)
    config = loop_config(cfg, run, data, stop_file, pause_epoch)
    metrics = train_in_trial(config) if in_trial else fit(build_trainer(cfg, config, callbacks or [])).metrics
    failure = kept.read(run, FAILURE)
    if failure is not None and "paused" in failure:
        raise RungReached(failure["paused"])
    if failure is not None:
        raise TrainingError(failure["error"])
    run.pull(CONFIG_FILE, METRICS.name, BACKBONE_FILE)  # a run at a URI: evaluations read the working copy
    return PretrainResult(run.local, last_metrics(run.local) or dict(metrics or {}), resumed)


def local_cpus(address: str | None) -> int | None:
    """The CPUs of the private local Ray this process runs (or would start), which is all there will
    be; None on a cluster, or in a Ray someone else started (a Tune trial): it may grow."""
    if address or os.environ.get("RAY_ADDRESS"):
        return None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return int(ray.cluster_resources().get("CPU", 0)) if PRIVATE_RAY else None
    try:
        from ray._private.utils import get_num_cpus
        return int(get_num_cpus())
    except Exception:  # a Ray without it: the machine's count
        return os.cpu_count() or 1


def check_local_cpus(cfg: PretrainConfig, address: str | None) -> None:
    """A group that cannot fit in a private local Ray would wait for workers that never come: refused
    at once (a cluster may still grow: not checked)."""
    cpus = local_cpus(address)
    fewest = cfg.min_workers or cfg.workers
    if cpus is not None and fewest * cfg.cpus_per_worker > cpus:
        most = max(1, cpus // cfg.cpus_per_worker)
        raise ConfigError(f"{fewest} worker(s) of {cfg.cpus_per_worker} CPU(s) do not fit: this machine's Ray has "
                          f"{cpus} CPUs: pass --workers {most} (or 1-{cfg.workers}), or --address of a cluster")


def worker_data(cfg: PretrainConfig, log=print) -> WorkerData:
    """What the workers are told about the data, prepared (or at a URI, found) and checked for the
    method and the monitors."""
    from rrdist.data.beton import ensure_prepared

    if cfg.data_uri:  # the workers stage it on their nodes; the driver reads the facts it needs
        from rrdist.data.staging import remote_manifest

        manifest = {**remote_manifest(cfg.data_uri, cfg.dataset), "dir": str(Path(cfg.root).resolve() / "ffcv" / cfg.dataset)}
    else:
        manifest = ensure_prepared(cfg.dataset, cfg.root, log=log)
    method = method_class(cfg.method)
    method.check_data(cfg, manifest)
    split = "train" if method.needs_labels else manifest.get("pretrain_split", "train")
    images = manifest["splits"][split]["n"]
    if cfg.batch_size > images:
        raise ConfigError(f"--batch-size {cfg.batch_size} is more than the {images} training images of {cfg.dataset}, "
                          f"so not one step would be trained: pass --batch-size {images} or less")
    data = WorkerData.from_manifest(manifest, cfg.dataset, cfg.root, cfg.data_uri)
    for monitor in cfg.monitors.values():
        monitor.check_data(data)
    return data


def loop_config(cfg: PretrainConfig, run: RunFolder, data: WorkerData, stop_file: str | None = None,
                pause_epoch: int | None = None) -> dict[str, Any]:
    """What every worker's loop is given (loop.train_loop_per_worker)."""
    return {
        "config": cfg, "run": run.location, "data": data, "monitors": dict(MONITORS),
        "fault": os.environ.get("RRDIST_FAULT"),  # test hooks: a failure to inject,
        # and a folder for every worker's per-step losses ("{run}" in it: the run folder's name)
        "trace": absolute(os.environ.get("RRDIST_TRACE", "").replace("{run}", run.location.rstrip("/").rsplit("/", 1)[-1])) or None,
        # requests to checkpoint and end: the caller's (a sweep's pause) and a batch job's
        "stop_file": stop_file,
        "pause_epoch": pause_epoch,  # a sweep's rung: the run ends after this epoch
        "in_process": cfg.in_process,  # Ray Train's local mode keeps no checkpoint: the loop does
    }


def train_in_trial(config: dict[str, Any]) -> dict[str, Any]:
    """The loop as the only worker, in this Tune trial's process; a user's mistake is its one line."""
    from rrdist.train import session
    from rrdist.train.loop import train_loop_per_worker

    with session.tune_trial():
        try:
            train_loop_per_worker(config)
        except Exception as e:
            message = find_user_message(e)
            if message:
                raise TrainingError(message) from None
            raise
    return {}


def build_trainer(cfg: PretrainConfig, loop_config: dict[str, Any], callbacks: list):
    """The TorchTrainer of a run: its workers, their resources, checkpoints kept and restarts allowed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from rrdist.train.loop import train_loop_per_worker
    from rrdist.train.ray_trainer import FFCVTorchTrainer
    from rrdist.train.rendezvous import AddressBoundTorchConfig

    run = RunFolder(loop_config["run"])
    gpus = {"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}
    return FFCVTorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=AddressBoundTorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=0 if cfg.in_process else
                                     (cfg.min_workers, cfg.workers) if cfg.min_workers else cfg.workers,
                                     use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker, **gpus},
                                     **({"elastic_resize_monitor_interval_s": cfg.resize_check_s}
                                        if cfg.min_workers else {})),
        run_config=RunConfig(name="train", **run.ray_storage(), checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=cfg.max_failures), callbacks=callbacks),
    )


def fit(trainer):
    """trainer.fit(); a user's mistake found inside a worker becomes its one-line error."""
    try:
        result = trainer.fit()
    except Exception as e:
        message = find_user_message(e)
        if message:
            raise TrainingError(message) from None
        raise
    if result.error is not None:
        message = find_user_message(result.error)
        if message:
            raise TrainingError(message)
        raise result.error
    return result


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last epoch's metrics as rank 0 logged them (also when a finished run is re-run)."""
    epochs = [line for line in kept.read(RunFolder(run_dir), METRICS) or [] if "event" not in line]
    return epochs[-1] if epochs else {}
