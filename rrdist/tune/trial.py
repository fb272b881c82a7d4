"""One sweep trial: a pretraining (a TorchTrainer) followed by the space's evaluations.

Every trial keeps its own record, `trials/<name>/trial.json`, written atomically: Tune's own
progress files lose history when a sweep is restored, this one does not. A trial whose record
says it completed with the same settings is not trained again when the sweep is resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrdist.storage import RunFolder, join, working_copy

RECORD = "trial.json"


@dataclass
class SweepContext:
    spec: dict[str, Any]  # SweepSpec.to_dict(): plain data, shipped to every trial
    sweep_dir: str  # a path or a URI
    root: str
    data_uri: str | None = None  # prepared data that each node copies to its `root`


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_name(axes: dict[str, Any], seed: int, trial_id: str | None = None) -> str:
    """Readable and stable: `K=4,gamma=2,seed=0` (plus Tune's id when axes are random draws)."""
    parts = [f"{k}={_fmt(v)}" for k, v in axes.items()] + [f"seed={seed}"]
    return ",".join(parts) + (f"_{trial_id}" if trial_id else "")


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


def read_record(run: str | Path) -> dict[str, Any] | None:
    """A trial's record in its run folder (a path or a URI); None if it has none (or half of one)."""
    try:
        text = RunFolder(run).read_text(RECORD)
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def write_record(run: str | Path, record: dict[str, Any]) -> None:
    RunFolder(run).write_text(RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rrdist.errors import find_user_message, first_line
    from rrdist.train.trainer import pretrain
    from rrdist.tune.space import has_random_axes, parse

    spec = parse(context.spec, source="sweep.yaml")
    axes = {name: params[name] for name in spec.axes}
    seed = int(params["seed"])
    trial_id = tune.get_context().get_trial_id()
    name = trial_name(axes, seed, trial_id if has_random_axes(spec) else None)
    run_dir = join(context.sweep_dir, "trials", name)
    cfg = spec.trial_config(axes, seed, context.root, run_dir, context.data_uri).validate()
    record = {"trial": name, "trial_id": trial_id, "axes": axes, "seed": seed, "config": cfg.to_dict()}

    saved = read_record(run_dir)
    if saved and saved.get("status") == "completed" and saved.get("config") == cfg.to_dict():
        tune.report({**saved["metrics"], "reused": 1})  # finished before an interruption: not re-run
        return
    try:
        result = pretrain(cfg, callbacks=[TuneReportCallback()])
        metrics = {k: result.metrics.get(k) for k in ("epoch", "loss", "pair_acc", "views_per_s")}
        if "probe_acc" in result.metrics:
            metrics["probe_acc"] = result.metrics["probe_acc"]
        with working_copy(run_dir, pull=(), push=("eval", "tb")) as local:  # pretrain fetched the backbone
            for evaluation, settings in spec.evaluations.items():
                metrics[f"{evaluation}_acc"] = run_evaluation(local, evaluation, settings)
    except Exception as e:
        message = find_user_message(e) or f"{type(e).__name__}: {first_line(e)}"
        write_record(run_dir, {**record, "status": "failed", "error": message})
        raise
    write_record(run_dir, {**record, "status": "completed", "metrics": metrics})
    tune.report({**metrics, "reused": 0})
