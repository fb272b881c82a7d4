"""Run a sweep: one Tune trial per point and seed; resume it; write its results table."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from rrdist import kept, startup
from rrdist.errors import ConfigError
from rrdist.monitors import figure_names
from rrdist.storage import RunFolder, absolute, check_folder, is_uri, join, shown
from rrdist.tune.records import read_record, read_sweep, sweep_trial, write_record
from rrdist.tune.halving import read_ledger
from rrdist.tune.space import EVALUATIONS, SweepSpec, epoch_metric_names, has_random_axes, load, param_space
from rrdist.tune.trial import SweepContext, run_trial, trains_in_trial

EVALUATED = [f"{e}_acc" for e in EVALUATIONS]  # what a finished trial's summary line shows
TUNE_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"  # read by Tune when a run starts: "0" is its older output engine


def _trial_lines(spec: SweepSpec, context: SweepContext):
    """rrdist's lines of a sweep, in place of Tune's tables: one when a trial starts (or resumes), one per
    epoch of its run (its epoch, not Tune's iteration count, which a paused trial starts again), and
    one at its end."""
    from ray import tune

    # What an epoch line shows besides the loss: the scheduler's figure and the monitors'.
    figures = list(dict.fromkeys(n for n in (spec.scheduler_settings.get("metric"), *figure_names())
                                 if n and n != "loss"))

    class TrialLines(tune.Callback):
        def __init__(self):
            self.known: dict[str, tuple[str, int | None]] = {}

        def name(self, trial) -> tuple[str, int | None]:
            """The trial's name in the sweep (its run folder's: `K=2,seed=0`) and its epochs."""
            if trial.trial_id not in self.known:
                try:
                    t = sweep_trial(spec, trial.config, trial.trial_id, context.sweep_dir, context.root,
                                    context.data_uri)
                    self.known[trial.trial_id] = (t.name, t.config.epochs)
                except Exception:  # not a trial of this space: Tune's name
                    return trial.trial_id, None
            return self.known[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info):
            name, epochs = self.name(trial)
            done = (trial.last_result or {}).get("epoch")
            print(f"[rrdist] trial {name} " + (f"resumed after epoch {done}" if done else "started")
                  + (f" ({epochs} epochs)" if epochs else ""), flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            epoch = result.get("epoch")
            if "reused" in result or "halted" in result or not isinstance(epoch, (int, float)):
                return  # its evaluations (shown at its end), or the scheduler's pause
            name, epochs = self.name(trial)
            shown = " ".join(f"{k} {result[k]:.4g}" for k in ("loss", *figures) if isinstance(result.get(k), float))
            print(f"[rrdist] trial {name} epoch {int(epoch)}" + (f"/{epochs}" if epochs else "")
                  + (f" {shown}" if shown else ""), flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            name, _ = self.name(trial)
            r = trial.last_result or {}
            scores = ", ".join(f"{k[:-4]} {100 * v:.2f}%" for k, v in r.items()
                               if k in EVALUATED and isinstance(v, float))
            again = " (done before; not re-run)" if r.get("reused") else ""
            loss = r.get("loss")
            loss = f"loss {loss:.4f}" if isinstance(loss, float) else "no training"  # random weights train nothing
            if "reused" not in r:  # ended by the scheduler before its evaluations
                print(f"[rrdist] trial {name} stopped early by the scheduler at epoch {r.get('epoch')}: {loss}",
                      flush=True)
                return
            print(f"[rrdist] trial {name} finished: {loss}{', ' + scores if scores else ''}{again}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[rrdist] trial {self.name(trial)[0]} failed; see results.md", flush=True)

    return TrialLines()


class _NoRestoreAdvice(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" after a Ctrl-C: rrdist says how (the same command)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextmanager
def _tune_output_off():
    """Tune's own output off while a sweep runs: with verbose=0 its older output engine prints nothing
    (the newer one, Ray's default, still prints its settings box, its results folder and a last status
    table); its warnings and errors still show, but for its advice on resuming."""
    before = os.environ.get(TUNE_NEW_OUTPUT)
    os.environ[TUNE_NEW_OUTPUT] = "0"
    advice = _NoRestoreAdvice()
    logging.getLogger("ray.tune.tune").addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger("ray.tune.tune").removeFilter(advice)
        if before is None:
            os.environ.pop(TUNE_NEW_OUTPUT, None)
        else:
            os.environ[TUNE_NEW_OUTPUT] = before


def _scheduler(spec: SweepSpec, sweep_dir: str):
    if not spec.scheduler:
        return None
    s = spec.scheduler_settings
    epochs = spec.trial_config(spec.grid_points()[0], spec.seeds[0], "data", "x").epochs
    if spec.scheduler_kind == "hyperband":
        from rrdist.tune.halving_scheduler import SynchronousHalving

        return SynchronousHalving(metric=s["metric"], mode=s["mode"], grace_period=s["grace_period"],
                                  reduction_factor=s["reduction_factor"], epochs=epochs, judge=s["judge"],
                                  axes=list(spec.axes), random_axes=has_random_axes(spec),
                                  expected=spec.trial_count(), slots=trial_slots(spec), sweep_dir=sweep_dir)
    from ray.tune.schedulers import ASHAScheduler

    # max_t one past the last epoch: ASHA stops a trial on reaching max_t, which would cut off
    # a full-length trial before its evaluations.
    return ASHAScheduler(time_attr="epoch", metric=s["metric"], mode=s["mode"], max_t=epochs + 1,
                         grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])


def trial_slots(spec: SweepSpec) -> int:
    """How many trials run at once: the space's concurrency, or (0) as many as the cluster's CPUs
    and GPUs hold at the trials' size."""
    if spec.concurrency:
        return spec.concurrency
    import ray

    total = ray.cluster_resources()
    workers = int(spec.trial.get("workers", 1))
    need = {"CPU": workers * int(spec.trial.get("cpus_per_worker", 1)),
            "GPU": workers * float(spec.trial.get("gpus_per_worker", 0) or 0)}
    return max(1, min(int(total.get(k, 0) // v) for k, v in need.items() if v > 0))


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What a trial's own process reserves: a one-worker trial trains there (its worker's CPUs and GPU);
    a larger one's process mostly waits on its Train workers: nothing, so that trials of all the
    machine's CPUs fit (a request must hold something: 1 byte of memory)."""
    if trains_in_trial(spec.trial):
        gpus = float(spec.trial.get("gpus_per_worker", 0) or 0)
        return {"cpu": int(spec.trial.get("cpus_per_worker", 1)), **({"gpu": gpus} if gpus else {})}
    return {"cpu": 0, "memory": 1}


def _datasets(spec: SweepSpec) -> list[str]:
    return sorted({spec.trial_config(point, 0, "data", "x").dataset for point in spec.grid_points()})


def _ending(result, spec: SweepSpec, halved: dict[str, Any] | None = None) -> dict[str, Any]:
    """How Tune ended a trial that could not record it itself (HALVED: its stop by synchronous
    halving, from halving.yaml, if it was stopped so)."""
    if result.error is not None:
        text = str(result.error).strip().splitlines()
        return {"status": "failed", "error": text[-1] if text else type(result.error).__name__}
    metrics = result.metrics or {}
    # Tune marks the last result "done" when it ends a trial itself (here: the scheduler stopped
    # it), not when an interruption (Ctrl-C) cuts it off; those continue on resume.
    status = "stopped" if spec.scheduler and (metrics.get("done") or halved) else "interrupted"
    return {"status": status, "epoch": halved["rung"] if halved else metrics.get("epoch"),
            "metrics": {k: v for k, v in metrics.items() if k in ("epoch", "views_per_s", *epoch_metric_names())}}


def _record_unfinished(sweep_dir: str, spec: SweepSpec, results, root: str, data_uri: str | None) -> list[str]:
    """Records for the trials Tune ended before they could write their own: failed, stopped by the
    scheduler, or interrupted; returns the names of the interrupted ones."""
    interrupted = []
    stops = stopped_by_halving(sweep_dir)
    for result in results:
        params, trial_id = result.config or {}, (result.metrics or {}).get("trial_id")
        if "seed" not in params or (has_random_axes(spec) and trial_id is None):
            continue  # not a trial of this sweep, or a random draw that never started (it has no name)
        trial = sweep_trial(spec, params, trial_id, sweep_dir, root, data_uri)
        ending = _ending(result, spec, stops.get(trial.name))
        own = (read_record(trial.run_dir) or {}).get("status")
        if own == "completed" or (own == "failed" and ending["status"] == "failed"):
            continue  # the trial wrote its own record (with its own error message)
        write_record(trial.run_dir, {**trial.record, **ending})
        if ending["status"] == "interrupted":
            interrupted.append(trial.name)
    return interrupted


def stopped_by_halving(sweep_dir: str) -> dict[str, dict[str, Any]]:
    """Trial name -> its "stopped" event in the sweep's halving.yaml ({} without one)."""
    events = read_ledger(RunFolder(sweep_dir))["events"]
    return {e["trial"]: e for e in events if e["event"] == "stopped"}


def run_sweep(space: str | Path, root: str, out: str | Path = "runs/sweeps", address: str | None = None,
              resume: bool = False, data_uri: str | None = None, log=print) -> Path | str:
    """Run (or resume) a sweep into OUT/<name> (a path, or a bucket URI); returns that folder.

    A Ctrl-C ends the running trials as interrupted, writes the report, then raises
    KeyboardInterrupt: running the same sweep again continues them.
    """
    from rrdist.train.trainer import init_ray
    from rrdist.tune.report import write_report

    spec = load(space)
    if not is_uri(out):
        check_folder(out, "--out")
    check_folder(root, "--root")
    sweep_dir = join(out, spec.name)
    folder = RunFolder(sweep_dir)
    root, data_uri = str(Path(root).expanduser().resolve()), absolute(data_uri or "") or None
    sweep = {"spec": spec.to_dict(), "root": root}
    check_trials_fit(spec, address)
    check_sweep_folder(folder, sweep, resume)
    read_ledger(folder)  # the halving decisions a resume continues from, if any
    kept.check(folder, *tune_state(folder))
    prepare_data(spec, root, data_uri, log)
    folder.write_text("sweep.yaml", yaml.safe_dump(sweep, sort_keys=False))
    init_ray(address)
    scheduler = _scheduler(spec, sweep_dir)
    context = SweepContext(spec.to_dict(), sweep_dir, root, data_uri)
    tuner = build_tuner(spec, scheduler, folder, RunFolder(out), context, log)
    startup.mark("sweep")
    with _tune_output_off():
        results = tuner.fit()
    interrupted = _record_unfinished(sweep_dir, spec, results, root, data_uri)
    log(write_report(sweep_dir))
    if interrupted:
        log(f"{len(interrupted)} trial(s) interrupted: run the same command again (or with --resume) "
            f"to continue them")
    log(f"results: {folder}/results.md, {folder}/results.csv; "
        f"curves and HParams: tensorboard --logdir {shown(str(folder), query=False)}")
    if interrupted:  # Tune swallowed the Ctrl-C to end the trials cleanly; the caller still sees it
        raise KeyboardInterrupt(f"{len(interrupted)} trial(s) interrupted")
    return sweep_dir if folder.remote else Path(sweep_dir)


def check_trials_fit(spec: SweepSpec, address: str | None) -> None:
    """A trial's worker group must fit in a private local Ray, or the trial would wait for it forever."""
    from rrdist.train.trainer import local_cpus

    cpus = local_cpus(address)
    workers = int(spec.trial.get("min_workers") or spec.trial.get("workers", 1))
    each = int(spec.trial.get("cpus_per_worker", 1))
    if cpus is not None and workers * each > cpus:
        raise ConfigError(f"a trial's {workers} worker(s) of {each} CPU(s) do not fit: this machine's Ray has {cpus} "
                          f"CPUs: set the space's trial workers to {max(1, cpus // each)} or fewer, or pass --address "
                          f"of a cluster")


def check_sweep_folder(folder: RunFolder, sweep: dict[str, Any], resume: bool) -> None:
    """Refuse a folder holding a sweep of another space, and a resume of nothing."""
    saved = read_sweep(folder)
    if saved is not None:
        if saved["spec"] != sweep["spec"]:
            raise ConfigError(f"{folder} holds a sweep of another space: use the same space to resume it, "
                              f"or set another 'name' (or --out)")
    elif resume:
        raise ConfigError(f"nothing to resume in {folder}: run the sweep without --resume first")


def prepare_data(spec: SweepSpec, root: str, data_uri: str | None, log) -> None:
    """Every dataset of the sweep, once, here, rather than racing in concurrent trials."""
    from rrdist.data.beton import ensure_prepared
    from rrdist.data.staging import remote_manifest

    for dataset in _datasets(spec):
        if data_uri:  # each trial's workers copy it to their node; here only check that it is there
            remote_manifest(data_uri, dataset)
        else:
            ensure_prepared(dataset, root, log=log)


TUNE_STATE_FIX = ("restore it, or remove the Tune files at the top of the sweep folder (tuner.pkl, *state-*.json): "
                  "a new Tune run then reuses every finished trial and resumes the others from their checkpoints")


def _whole_pickle(data: bytes) -> bytes:
    if not (data[:1] == b"\x80" and data[-1:] == b"."):  # a pickle's protocol mark and its STOP
        raise ValueError("not a whole pickle: cut short?")
    return data


def tune_state(folder: RunFolder) -> list[kept.Kept]:
    """The files Tune reads back when it restores a sweep (its own format: checked for being whole)."""
    # experiment_state-*.json is JSON; basic-variant-state-*.json is, despite its name, a pickle
    pickles = [n for n in folder.files() if n == "tuner.pkl" or n.startswith("basic-variant-state-")]
    states = [n for n in folder.files() if n.startswith("experiment_state-") and n.endswith(".json")]
    return [kept.Kept(n, _whole_pickle, TUNE_STATE_FIX) for n in pickles] + \
        [kept.Kept(n, kept.json_of, TUNE_STATE_FIX) for n in states]


def build_tuner(spec: SweepSpec, scheduler, folder: RunFolder, parent: RunFolder, context: SweepContext, log):
    """A new Tuner over the space, or the restored one of an interrupted sweep in `folder`."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(spec))
    # Tune's own state (for restoring) goes beside the trials, through the bucket's filesystem at a URI.
    tune_fs = {"storage_filesystem": folder.fs} if folder.remote else {}
    if tune.Tuner.can_restore(folder.path, **tune_fs):
        log(f"resuming the sweep in {folder}: finished trials are kept, interrupted ones continue")
        tuner = tune.Tuner.restore(folder.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   **tune_fs)
        # The saved run settings carry the output of the rrdist that started the sweep: this one's instead.
        run_config = tuner._local_tuner.get_run_config() if hasattr(tuner, "_local_tuner") else None
        if run_config is not None:
            run_config.verbose, run_config.callbacks = 0, [_trial_lines(spec, context)]
        return tuner
    log(f"sweep {spec.name}: {spec.trial_count()} trials -> {folder}")
    # Synchronous halving holds every trial at once (paused ones count as live for Tune's limit) and
    # starts them itself, `concurrency` at a time. A pause must end the trial's process, and with it
    # its Train run: a reused process would keep training while it waits for the next trial.
    halving = spec.scheduler_kind == "hyperband"
    return tune.Tuner(
        trainable, param_space=param_space(spec),
        # reuse_actors: a trial's driver process (its imports, FFCV's compiled code for the evaluations'
        # loaders) serves the next trial: about 10 s less per trial.
        tune_config=tune.TuneConfig(num_samples=spec.samples, scheduler=scheduler, reuse_actors=not halving,
                                    max_concurrent_trials=None if halving else spec.concurrency or None),
        run_config=tune.RunConfig(name=spec.name, **parent.ray_storage(), callbacks=[_trial_lines(spec, context)],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0)))
