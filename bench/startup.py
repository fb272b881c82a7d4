"""What a start costs, part by part: a sweep trial's first start, its resume after a rung's pause, and a
run's restart after a worker is killed, for one or more checkouts of rrdist side by side in one run.

Each checkout runs, from its own code (PYTHONPATH), with $RRDIST_STARTUP_LOG set (rrdist/startup.py):
- a synchronous-halving sweep of two trials (conv4, K in {2, 4}, 2 epochs, the rung after epoch 1,
  reduction 2, one trial at a time, one 1-CPU worker, the kNN monitor every epoch): two first
  starts, then the resume of the better one;
- a pretraining (K = 4, 2 epochs, the kNN monitor) whose worker kills its own process at step
  --kill-step of epoch 1: the restart, from the kill to the first step trained again.
A start is timed from the moment its slot is free (the sweep's Tune run begins, or the previous
trial's workers end at the rung, or the worker dies) to the end of its first training step, and
broken into phases at the marks the processes leave. Run:

    python bench/startup.py --root DATA --code before=/path/to/old/checkout --code after=. \
                            [--per-class 1000] [--json bench/results/startup_cpu.json]

DATA holds CIFAR-10's image tree (DATA/cifar10-jpg/{train,test}/<class>/*.jpg).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asha_study import subset  # noqa: E402  (the same CIFAR-10 subset as the halving study)

# (phase, what the time up to its mark was spent on), in order; a start is timed to its last.
PHASES = [
    ("trial_process", "Tune starts the trial's process (Ray worker start)"),
    ("trial", "the trial's imports, until its function runs"),
    ("fit", "the trial's checks, data, TorchTrainer"),
    ("worker_process", "Ray Train's controller and worker group, to the worker's process start"),
    ("worker", "the worker's imports, until its loop runs (and the process group)"),
    ("model", "model, optimizer, checkpoint loaded"),
    ("monitors", "FFCV loaders and the monitors' loaders"),
    ("first_batch", "the first batch: FFCV's compiled pipeline, the views"),
    ("first_step", "the first step: forward, backward, Adam"),
]


def space(name: str) -> dict:
    return {"name": name,
            "fixed": {"dataset": "imagefolder", "backbone": "conv4", "method": "relational", "epochs": 2,
                      "batch_size": 64, "knn_every": 1, "gamma": 0.0},
            "axes": {"K": {"grid": [2, 4]}}, "seeds": 1, "trial": {"workers": 1, "cpus_per_worker": 1},
            "concurrency": 1,
            "scheduler": {"hyperband": {"metric": "knn_acc", "mode": "max", "grace_period": 1, "reduction_factor": 2}}}


def run(cmd: list[str], code: Path, log: Path, cwd: Path, extra: dict | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "RRDIST_STARTUP_LOG": str(log), **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    began = time.time()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return time.time() - began


def marks(log: Path) -> list[dict]:
    return sorted((json.loads(line) for line in log.read_text().splitlines() if line.strip()), key=lambda m: m["t"])


def starts(lines: list[dict], openers: tuple[str, ...]) -> list[dict]:
    """Each start of a rank-0 worker: the phases' times from the moment its slot was free (the last
    `openers` mark before it), with the trial's and worker's process starts as phases of their own."""
    out = []
    workers = [i for i, m in enumerate(lines) if m["phase"] == "worker" and m.get("rank", 0) == 0]
    for i in workers:
        opened = max((m for m in lines[:i] if m["phase"] in openers and m.get("rank", 0) == 0), key=lambda m: m["t"],
                     default=None)
        if opened is None:
            continue  # a start before any opener (the run's first, when restarts are asked for)
        run_name = lines[i].get("run")
        trial = [m for m in lines[:i] if m["t"] >= opened["t"] and m["phase"] == "trial" and m.get("run") == run_name]
        fit = [m for m in lines[:i] if m["t"] >= opened["t"] and m["phase"] == "fit" and m.get("run") == run_name]
        pid = lines[i]["pid"]
        after = [m for m in lines[i:] if m["pid"] == pid]
        at = {"worker": lines[i]["t"], "worker_process": max(lines[i]["process_start"], opened["t"])}
        if trial:
            at["trial"] = trial[-1]["t"]
            at["trial_process"] = max(trial[-1]["process_start"], opened["t"])
        if fit:
            at["fit"] = fit[-1]["t"]
            at["worker_process"] = max(at["worker_process"], fit[-1]["t"])
        for name in ("model", "monitors", "first_batch", "first_step"):
            hit = next((m for m in after if m["phase"] == name), None)
            if hit is not None:
                at[name] = hit["t"]
        if "first_step" not in at:
            continue  # a start that trained nothing (a run already complete)
        phases, last = {}, opened["t"]
        for name, _ in PHASES:
            if name in at:
                phases[name] = round(at[name] - last, 2)
                last = at[name]
        out.append({"run": run_name, "opened_by": opened["phase"], "total_s": round(at["first_step"] - opened["t"], 2),
                    "phases": phases})
    return out


def measure(name: str, code: Path, data: Path, work: Path, kill_step: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    space_file = work / "space.yaml"
    space_file.write_text(yaml.safe_dump(space(f"startup_{name}")))
    sweep_log = work / "sweep.jsonl"
    sweep_log.unlink(missing_ok=True)
    sweep_s = run([python, "-m", "rrdist", "sweep", str(space_file), "--root", str(data), "--out", str(work / "sweeps")],
                  code, sweep_log, work)
    sweep_starts = starts(marks(sweep_log), ("sweep", "end"))
    for s, kind in zip(sweep_starts, ("first start", "first start", "resume")):
        s["kind"] = kind
    kill_log = work / "kill.jsonl"
    kill_log.unlink(missing_ok=True)
    kill_s = run([python, "-m", "rrdist", "pretrain", "--dataset", "imagefolder", "--root", str(data), "--K", "4",
                  "--epochs", "2", "--knn-every", "1", "--workers", "1", "--out", str(work / "killed")],
                 code, kill_log, work, {"RRDIST_FAULT": f"kill-worker:0:1:{kill_step}"})
    kill_lines = marks(kill_log)
    restarts = [s for s in starts(kill_lines, ("killed",)) if s["opened_by"] == "killed"]
    for s in restarts:
        s["kind"] = "restart after a worker kill"
    runs = starts([{"phase": "command", "t": kill_lines[0]["process_start"], "rank": 0}] + kill_lines, ("command",))[:1]
    for s in runs:
        s["kind"] = "pretrain command (from its process start)"
    return {"code": name, "sweep_s": round(sweep_s, 1), "pretrain_s": round(kill_s, 1),
            "starts": sweep_starts + restarts + runs}


def table(results: list[dict]) -> str:
    names = [r["code"] for r in results]
    rows = ["| start | phase | " + " | ".join(f"{n} (s)" for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
    kinds = [(s["kind"], i) for i, s in enumerate(results[0]["starts"])]
    for kind, i in kinds:
        for phase, what in PHASES:
            values = [r["starts"][i]["phases"].get(phase) if i < len(r["starts"]) else None for r in results]
            if all(v is None for v in values):
                continue
            rows.append(f"| {kind} | {what} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
        totals = [r["starts"][i]["total_s"] if i < len(r["starts"]) else None for r in results]
        rows.append(f"| **{kind}** | **total** | " + " | ".join("-" if v is None else f"**{v:.1f}**" for v in totals) + " |")
    rows.append("| sweep command (2 trials, 3 starts, 3 epochs) | wall | " + " | ".join(f"{r['sweep_s']:.0f}" for r in results) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--code", action="append", required=True, help="NAME=CHECKOUT (repeat: side by side)")
    parser.add_argument("--work", default="/tmp/rrdist-startup")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--kill-step", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from rrdist.data.beton import prepare

    work = Path(args.work)
    data = subset(Path(args.root) / "cifar10-jpg", work / "data" / "tree", args.per_class)
    prepare("imagefolder", data, log=lambda *a: None)  # once, before either side runs
    results = []
    for spec in args.code:
        name, _, checkout = spec.partition("=")
        results.append(measure(name, Path(checkout).resolve(), data, work / name, args.kill_step))
        print(json.dumps(results[-1], indent=1), flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"date": str(date.today()), "per_class": args.per_class,
                                               "cpus": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
