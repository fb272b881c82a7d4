"""The sweep's results table, from what is on disk: one row per point, mean ± std over seeds.

Writes `results.md`, `results.csv` (one row per point), `trials.csv` (one row per trial),
TensorBoard HParams (`hparams/`) and pictures against K and gamma (`figures/`), beside the
paper's number wherever the paper reports one.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rrdist import kept
from rrdist.errors import DataError
from rrdist.storage import RunFolder
from rrdist.tune.figures import write_figures
from rrdist.tune.halving import LEDGER_FILE
from rrdist.tune.records import RECORD, parse_record, read_sweep

COUNTS = ("stopped", "interrupted", "failed")  # results.csv: trials of a point that did not complete


def load_sweep(folder: RunFolder) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """sweep.yaml and the trials' records; a damaged record is left out, said in one line on stderr."""
    sweep = read_sweep(folder)
    if sweep is None:
        raise DataError(f"{folder} is not a sweep folder (no sweep.yaml): pass the folder `rrdist sweep` wrote")
    trials = []
    for name in folder.subfolders("trials"):
        data = folder.read_bytes(f"trials/{name}/{RECORD}")
        if data is None:
            continue
        record = parse_record(data)
        if record is None:
            print(f"rrdist: trials/{name}/{RECORD} is damaged: left out of the table (the trial runs again on "
                  f"--resume)", file=sys.stderr)
        else:
            trials.append(record)
    return sweep, trials


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample std (0.0 for one value: no spread to show) and how many values."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def _paper(evaluation: str, config: dict[str, Any]) -> tuple[float, float, str] | None:
    """The paper's number for a trial's evaluation: its method's own lookup (`Method.paper_accuracy`)."""
    from rrdist.config import PretrainConfig
    from rrdist.methods import METHODS, config_from_dict

    if evaluation not in ("linear", "linear_random"):
        return None  # the paper's tables quoted here are linear evaluations
    if evaluation == "linear_random":  # the initial weights: the untrained baseline's row
        shared = {f.name: config[f.name] for f in PretrainConfig.shared_fields() if f.name in config}
        config = {**shared, "method": next(name for name, m in METHODS.items() if not m.trainable)}
    cfg = config_from_dict(config)
    return METHODS[cfg.method].paper_accuracy(cfg, cfg.dataset)


def _where(trial: dict[str, Any], metric: str | None = None) -> str:
    """`seed 1 at epoch 4 (knn_acc 0.4015)`: where it ended, with the scheduler's figure there."""
    epoch = trial.get("epoch")
    where = f"seed {trial['seed']} " + ("before its first epoch" if epoch is None else f"at epoch {epoch}")
    value = (trial.get("metrics") or {}).get(metric) if metric else None
    return where + (f" ({metric} {value:.4g})" if isinstance(value, (int, float)) else "")


def scheduler_of(sweep: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The sweep's scheduler kind (fifo, asha, hyperband) and settings."""
    scheduler = sweep["spec"].get("scheduler", "fifo")
    return next(iter(scheduler.items())) if isinstance(scheduler, dict) else ("fifo", {})


def summarize(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    axes = list(sweep["spec"]["axes"])
    evaluations = list(sweep["spec"]["evaluations"])
    metric = scheduler_of(sweep)[1].get("metric")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault(tuple(json.dumps(t["axes"].get(a)) for a in axes), []).append(t)
    rows = []
    for key, members in sorted(groups.items()):
        done = [t for t in members if t["status"] == "completed"]
        row: dict[str, Any] = {a: members[0]["axes"].get(a) for a in axes}
        row["seeds_done"] = len(done)
        row["stopped"] = [_where(t, metric) for t in members if t["status"] == "stopped"]  # by the scheduler
        row["interrupted"] = [_where(t) for t in members if t["status"] == "interrupted"]
        row["failed"] = [t for t in members if t["status"] == "failed"]
        for evaluation in evaluations:
            values = [t["metrics"][f"{evaluation}_acc"] for t in done if t["metrics"].get(f"{evaluation}_acc") is not None]
            row[evaluation] = _mean_std([100 * v for v in values]) if values else None
            row[f"{evaluation}_paper"] = _paper(evaluation, members[0]["config"])
        losses = [t["metrics"]["loss"] for t in done if t["metrics"].get("loss") is not None]
        row["loss"] = _mean_std(losses) if losses else None
        rows.append(row)
    return rows


def _cell(value: tuple[float, float, int] | None, digits: int = 2) -> str:
    """`mean ± std` over several seeds; one seed's value alone (one value has no spread)."""
    if value is None:
        return "—"
    if value[2] < 2:
        return f"{value[0]:.{digits}f}"
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def render(sweep: dict[str, Any], rows: list[dict[str, Any]], trials: list[dict[str, Any]],
           ledger: dict[str, Any] | None = None) -> str:
    spec = sweep["spec"]
    axes, evaluations = list(spec["axes"]), list(spec["evaluations"])
    fixed = ", ".join(f"{k}={v}" for k, v in spec["fixed"].items())
    head = axes + [h for e in evaluations for h in (f"{e} acc % (mean ± std)", "paper")] + ["seeds", "loss", "status"]
    lines = [f"# Sweep {spec['name']}", "",
             f"Fixed: {fixed or '(none)'}; seeds {spec['seeds']}; data root {sweep['root']}.",
             "Accuracy in %, mean ± sample std over the seeds done (one seed: its value alone); "
             "'paper' is the paper's mean ± std (and table).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row[a]) for a in axes]
        for e in evaluations:
            paper = row[f"{e}_paper"]
            cells += [_cell(row[e]), "—" if paper is None else f"{paper[0]:.2f} ± {paper[1]:.2f} ({paper[2]})"]
        status = []
        if row["stopped"]:
            status.append(f"stopped early ({scheduler_of(sweep)[0]}): " + "; ".join(row["stopped"]))
        if row["interrupted"]:
            status.append("interrupted: " + "; ".join(row["interrupted"]) + " (rrdist sweep --resume continues)")
        if row["failed"]:
            status.append(f"{len(row['failed'])} failed")
        cells += [str(row["seeds_done"]), _cell(row["loss"], 4), ", ".join(status) or "done"]
        lines.append("| " + " | ".join(cells) + " |")
    scored = [r for r in rows if evaluations and r.get(evaluations[0]) is not None]
    if scored:
        best = max(scored, key=lambda r: r[evaluations[0]][0])
        setting = ", ".join(f"{a}={best[a]}" for a in axes) or "the only point"
        lines += ["", f"**Best** ({evaluations[0]}): {setting}: {_cell(best[evaluations[0]])}%"]
    if ledger and ledger["events"]:
        lines += ["", *render_fates(ledger, trials)]
    failed = [t for t in trials if t["status"] == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{t['trial']}`: {t.get('error', 'unknown error')}" for t in failed]
    return "\n".join(lines) + "\n"


def fate_lines(ledger: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, str]:
    """Each trial's path through the rungs, in words: `paused at epoch 1; resumed; completed`."""
    metric = ledger["metric"]
    words: dict[str, list[str]] = {}
    for e in ledger["events"]:
        value = e.get(metric)
        figure = f" ({metric} {value:.4g})" if isinstance(value, (int, float)) else ""
        words.setdefault(e["trial"], []).append(
            {"paused": f"paused at epoch {e.get('epoch')}", "resumed": "resumed",
             "stopped": f"stopped at epoch {e.get('rung')}{figure}",
             "completed": "completed"}.get(e["event"], e["event"]))
    status = {t["trial"]: t["status"] for t in trials}
    ending = {"completed": "completed", "interrupted": "interrupted: `rrdist sweep --resume` continues",
              "failed": "failed", "stopped": "stopped", None: "not started"}
    out = {}
    for name in sorted(set(words) | set(status)):
        path = words.get(name, [])
        if not (path and (path[-1] == "completed" or path[-1].startswith("stopped"))):
            path = path + [ending.get(status.get(name), str(status.get(name)))]
        out[name] = "; ".join(path)
    return out


def render_fates(ledger: dict[str, Any], trials: list[dict[str, Any]]) -> list[str]:
    rungs, metric = ledger["rungs"], ledger["metric"]
    judged = "a point by the mean of its seeds" if ledger["judge"] == "point" else "each trial alone"
    head = ["trial", *[f"{metric} at epoch {r}" for r in rungs], "fate"]
    lines = ["## Trial fates (synchronous halving)", "",
             f"Rungs at epochs {', '.join(map(str, rungs))}; at each, {judged} is ranked on {metric} "
             f"({ledger['mode']}) and the best 1/{ledger['reduction_factor']:g} go on.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, fate in fate_lines(ledger, trials).items():
        values = ledger["values"].get(name, {})
        cells = [f"{values[r]:.4g}" if r in values else "—" for r in rungs]
        lines.append("| " + " | ".join([f"`{name}`", *cells, fate]) + " |")
    return lines


def write_fates(folder: RunFolder, ledger: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """TensorBoard `fates/`: one run per trial, its fate as text and its rung values as scalars."""
    metric = ledger["metric"]

    def fill(tmp: Path, writer_of) -> None:
        for name, fate in fate_lines(ledger, trials).items():
            with writer_of(str(tmp / name)) as writer:
                writer.add_text("fate", fate, 0)
                for epoch, value in sorted(ledger["values"].get(name, {}).items()):
                    writer.add_scalar(f"rung/{metric}", value, epoch)

    write_tensorboard_folder(folder, "fates", fill)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_tensorboard_folder(folder: RunFolder, name: str, fill) -> None:
    """Replace the sweep's TensorBoard folder NAME at once: `fill(tmp, SummaryWriter)` writes it in a
    temporary folder beside it, which then takes its place (a reader never sees half of one)."""
    from torch.utils.tensorboard import SummaryWriter

    folder.local.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.local))
    fill(tmp, SummaryWriter)
    target = folder.local / name
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    folder.replace_folder(name)


def write_hparams(folder: RunFolder, axes: list[str], trials: list[dict[str, Any]]) -> None:
    """TensorBoard HParams: one run per completed trial, its axes and seed against its metrics."""
    def fill(tmp: Path, writer_of) -> None:
        for t in trials:
            if t["status"] != "completed":
                continue
            hparams = {**{a: t["axes"][a] for a in axes}, "seed": t["seed"]}
            metrics = {f"hparam/{k}": float(v) for k, v in t["metrics"].items() if isinstance(v, (int, float))}
            with writer_of(str(tmp)) as writer:
                writer.add_hparams(hparams, metrics, run_name=t["trial"])

    write_tensorboard_folder(folder, "hparams", fill)


def write_report(sweep_dir: str | Path) -> str:
    """The tables of a sweep folder (a path or a URI), written beside its trials; returns results.md."""
    folder = RunFolder(sweep_dir)
    sweep, trials = load_sweep(folder)
    rows = summarize(sweep, trials)
    ledger = kept.read(folder, LEDGER_FILE)
    text = render(sweep, rows, trials, ledger)
    folder.write_text("results.md", text)
    axes, evaluations = list(sweep["spec"]["axes"]), list(sweep["spec"]["evaluations"])
    flat = []
    for row in rows:
        item = {a: row[a] for a in axes}
        for e in evaluations:
            mean_std, paper = row[e], row[f"{e}_paper"]
            item.update({f"{e}_mean": None if mean_std is None else round(mean_std[0], 3),
                         f"{e}_std": None if mean_std is None or mean_std[2] < 2 else round(mean_std[1], 3),
                         f"{e}_paper_mean": paper[0] if paper else None, f"{e}_paper_std": paper[1] if paper else None,
                         f"{e}_paper_table": paper[2] if paper else None})
        item.update({"seeds_done": row["seeds_done"], **{k: len(row[k]) for k in COUNTS}})
        flat.append(item)
    columns = axes + [f"{e}_{s}" for e in evaluations for s in ("mean", "std", "paper_mean", "paper_std", "paper_table")]
    folder.write_text("results.csv", _csv(flat, columns + ["seeds_done", *COUNTS]))
    per_trial = [{"trial": t["trial"], **t["axes"], "seed": t["seed"], "status": t["status"],
                  **{k: v for k, v in (t.get("metrics") or {}).items()}, "error": t.get("error", "")} for t in trials]
    metric_cols = sorted({k for t in trials for k in (t.get("metrics") or {})})
    folder.write_text("trials.csv", _csv(per_trial, ["trial", *axes, "seed", "status", *metric_cols, "error"]))
    write_hparams(folder, axes, trials)
    if ledger:
        write_fates(folder, ledger, trials)
    write_figures(folder, axes, evaluations, rows)
    return text
