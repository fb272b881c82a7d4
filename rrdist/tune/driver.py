"""Run a sweep: one Tune trial per point and seed; resume it; write its results table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rrdist.errors import ConfigError
from rrdist.storage import RunFolder, absolute, check_folder, is_uri, join, shown
from rrdist.tune.records import read_record, read_sweep, sweep_trial, write_record
from rrdist.tune.halving import read_ledger
from rrdist.tune.space import EVALUATIONS, SweepSpec, epoch_metric_names, has_random_axes, load, param_space
from rrdist.tune.trial import SweepContext, run_trial

EVALUATED = [f"{e}_acc" for e in EVALUATIONS]  # what a finished trial's summary line shows


def _summary_callback():
    from ray import tune

    class TrialSummary(tune.Callback):
        """One line per finished trial, beside Tune's live table."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            scores = ", ".join(f"{k[:-4]} {100 * v:.2f}%" for k, v in r.items()
                               if k in EVALUATED and isinstance(v, float))
            again = " (done before; not re-run)" if r.get("reused") else ""
            loss = r.get("loss")
            loss = f"loss {loss:.4f}" if isinstance(loss, float) else "no training"  # random weights train nothing
            if "reused" not in r:  # ended by the scheduler before its evaluations
                print(f"[rrdist] trial {trial.trial_id} {trial.config} stopped early by the scheduler at epoch "
                      f"{r.get('epoch')}: {loss}", flush=True)
                return
            print(f"[rrdist] trial {trial.trial_id} {trial.config} finished: {loss}"
                  f"{', ' + scores if scores else ''}{again}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[rrdist] trial {trial.trial_id} {trial.config} failed; see results.md", flush=True)

    return TrialSummary()


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
    check_sweep_folder(folder, sweep, resume)
    read_ledger(folder)  # the halving decisions a resume continues from, if any
    prepare_data(spec, root, data_uri, log)
    folder.write_text("sweep.yaml", yaml.safe_dump(sweep, sort_keys=False))
    init_ray(address)
    scheduler = _scheduler(spec, sweep_dir)
    context = SweepContext(spec.to_dict(), sweep_dir, root, data_uri)
    results = build_tuner(spec, scheduler, folder, RunFolder(out), context, log).fit()
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


def build_tuner(spec: SweepSpec, scheduler, folder: RunFolder, parent: RunFolder, context: SweepContext, log):
    """A new Tuner over the space, or the restored one of an interrupted sweep in `folder`."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                    {"cpu": 0.01})  # a trial's driver mostly waits on its Train workers
    # Tune's own state (for restoring) goes beside the trials, through the bucket's filesystem at a URI.
    tune_fs = {"storage_filesystem": folder.fs} if folder.remote else {}
    if tune.Tuner.can_restore(folder.path, **tune_fs):
        log(f"resuming the sweep in {folder}: finished trials are kept, interrupted ones continue")
        return tune.Tuner.restore(folder.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  **tune_fs)
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
        run_config=tune.RunConfig(name=spec.name, **parent.ray_storage(), callbacks=[_summary_callback()],
                                  failure_config=tune.FailureConfig(max_failures=0)))
