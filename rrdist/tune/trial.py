"""One sweep trial: a pretraining (in the trial's own process for one worker, else a TorchTrainer)
followed by the space's evaluations.

A trial whose record (records.py) says it completed with the same settings is not trained again
when the sweep is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrdist import kept, startup
from rrdist.monitors import MONITORS, adopt
from rrdist.storage import RunFolder, working_copy
from rrdist.tune.halving import RUNG, halt_file
from rrdist.tune.records import read_record, sweep_trial, write_record


@dataclass
class SweepContext:
    spec: dict[str, Any]  # SweepSpec.to_dict(): plain data, shipped to every trial
    sweep_dir: str  # a path or a URI
    root: str
    data_uri: str | None = None  # prepared data that each node copies to its `root`
    monitors: dict[str, type] = field(default_factory=lambda: dict(MONITORS))  # the driver's registry


def run_evaluation(run_dir: Path, evaluation: str, settings: dict[str, Any]) -> float:
    """One evaluation of a finished trial; its headline accuracy (retrieval: top-10)."""
    from rrdist.tune.space import EVALUATIONS

    if evaluation in ("linear", "linear_random"):
        from rrdist.eval.linear import LinearSettings, evaluate_linear

        outcome = evaluate_linear(run_dir, init=EVALUATIONS[evaluation], settings=LinearSettings(**settings))
        return outcome["test_accuracy"]
    if evaluation == "finetune":
        from rrdist.eval.finetune import FinetuneSettings, evaluate_finetune

        return evaluate_finetune(run_dir, settings=FinetuneSettings(**settings))["test_accuracy"]
    from rrdist.eval.retrieval import evaluate_retrieval

    return evaluate_retrieval(run_dir, **settings)["top10"]["accuracy"]


def trains_in_trial(trial: Any) -> bool:
    """Whether a trial of these settings (a PretrainConfig, or a space's `trial` block) trains in its
    own process: one worker needs no Ray Train group, whose controller and worker processes would
    cost two cold Python starts at every start and resume of the trial."""
    get = trial.get if isinstance(trial, dict) else lambda k, d=None: getattr(trial, k, d)
    return int(get("workers", 1)) == 1 and not get("min_workers", None)


def epoch_reports():
    """Ray Train's reports forwarded to Tune, but for checkpoints inside an epoch: they carry no
    epoch figures for a scheduler to judge (the run resumes from them through Ray Train itself)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("inside_epoch"):
                return
            super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


def wait_to_be_paused(run_dir: str, timeout_s: float = 600.0) -> None:
    """Tell the scheduler that the Train run has ended at its rung (or at its request), then wait for
    Tune to pause (or stop) this trial: the trial's process ends there, and a resume starts it again."""
    import threading

    from ray import tune

    from rrdist.train.trainer import last_metrics

    tune.report({**(last_metrics(Path(run_dir)) or {}), "halted": 1})
    threading.Event().wait(timeout_s)
    raise RuntimeError(f"the scheduler did not pause the trial in {run_dir} within {timeout_s:.0f} s after its "
                       f"Train run ended at the scheduler's request")


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    from ray import tune
    from ray.exceptions import RayActorError

    from rrdist.errors import find_user_message, first_line
    from rrdist.train.trainer import RungReached, pretrain
    from rrdist.tune.space import parse

    adopt(context.monitors)  # before the space is read: it may name their settings and figures
    spec = parse(context.spec, source="sweep.yaml")
    trial = sweep_trial(spec, params, tune.get_context().get_trial_id(), context.sweep_dir, context.root,
                        context.data_uri)
    cfg, run_dir = trial.config.validate(), trial.run_dir
    startup.mark("trial", run=trial.name)

    saved = read_record(run_dir)
    if saved and saved.get("status") == "completed" and saved.get("config") == cfg.to_dict():
        tune.report({**saved["metrics"], "reused": 1})  # finished before an interruption: not re-run
        return
    halving = spec.scheduler_kind == "hyperband"
    halt = halt_file(context.sweep_dir, trial.name) if halving else None
    if halt:
        Path(halt).unlink(missing_ok=True)  # the request of an earlier pause, carried out: this is the resume
    pause = (kept.read(RunFolder(run_dir), RUNG) or {}).get("pause_epoch") if halving else None
    try:
        if trains_in_trial(cfg):  # the loop in this process: no Ray Train processes to start
            result = pretrain(cfg, stop_file=halt, pause_epoch=pause, in_trial=True)
        else:
            result = pretrain(cfg, callbacks=[epoch_reports()], stop_file=halt, pause_epoch=pause)
        metrics = dict(result.metrics)  # the last epoch's: loss, the method's figures, monitors, speed
        with working_copy(run_dir, pull=(), push=("eval", "tb")) as local:  # pretrain fetched the backbone
            for evaluation, settings in spec.evaluations.items():
                metrics[f"{evaluation}_acc"] = run_evaluation(local, evaluation, settings)
    except RungReached:  # the workers ended the run at its rung, with that epoch's checkpoint
        wait_to_be_paused(run_dir)
    except RayActorError:
        # Its Train run died with it: Tune is ending this trial (the scheduler stopped it, or the
        # sweep was interrupted), and the driver records how; a record here could land after that one.
        raise
    except Exception as e:
        if halt and Path(halt).exists():  # the scheduler's pause (or stop): the run saved a checkpoint and ended
            wait_to_be_paused(run_dir)
        message = find_user_message(e) or f"{type(e).__name__}: {first_line(e)}"
        write_record(run_dir, {**trial.record, "status": "failed", "error": message})
        raise
    write_record(run_dir, {**trial.record, "status": "completed", "metrics": metrics})
    tune.report({**metrics, "reused": 0})
