"""Early stopping, proven: one K x gamma space swept on the same cluster under FIFO (every trial to
the end), ASHA and synchronous halving (`hyperband`) on the online kNN monitor, compared on compute
spent, wall time and the winner each picks.

Both sweeps: conv4 on a CIFAR-10 subset (an image folder of the first --per-class training images
of each class and the first --per-class test images), K in {2, 4, 8} x gamma in {0, 1, 2, 3},
--epochs epochs, one seed, one 1-CPU worker per trial, two trials at once, the kNN monitor every
epoch, then linear evaluation (100 epochs) of every trial that runs to the end. ASHA and halving
rank on knn_acc (max) with --grace and --reduction (halving: --hb-grace, --hb-reduction).
Recorded: trial-epochs and wall time of each sweep, the steps trained past the last whole epoch
(a paused trial halts a few steps into the next one) and the steps redone on resumes,
each sweep's best configuration by linear accuracy, ASHA's survivors, the FIFO ranking by knn_acc at
the grace epoch (does the early monitor predict the final order?), and Ray's free CPUs polled every
second (a stopped trial must give its CPU back: the next trial starts at once, and none stay held
when the sweep ends). Run:

    python bench/asha_study.py --root DATA [--per-class 1000] [--epochs 8] [--grace 2] [--reduction 3]
                               [--hb-grace 1] [--hb-reduction 4] [--sweeps hyperband fifo asha]

DATA holds CIFAR-10's image tree (DATA/cifar10-jpg/{train,test}/<class>/*.jpg).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from datetime import date
from pathlib import Path

import yaml


def subset(tree: Path, dest: Path, per_class: int) -> Path:
    for split in ("train", "test"):
        for cls in sorted((tree / split).iterdir()):
            out = dest / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:per_class]:
                if not (out / f.name).exists():
                    os.symlink(f, out / f.name)
    return dest


def space(name: str, epochs: int, scheduler) -> dict:
    # Halving sets its own checkpoints (every epoch: a paused trial resumes from its rung's).
    checkpoints = {} if "hyperband" in scheduler else {"checkpoint_every": epochs}
    return {"name": name, "fixed": {"dataset": "imagefolder", "backbone": "conv4", "method": "relational",
                                    "epochs": epochs, "batch_size": 64, "knn_every": 1, **checkpoints},
            "axes": {"K": {"grid": [2, 4, 8]}, "gamma": {"grid": [0, 1, 2, 3]}}, "seeds": 1,
            "trial": {"workers": 1, "cpus_per_worker": 1}, "concurrency": 2, "scheduler": scheduler,
            "evaluations": {"linear": {"epochs": 100}}}


def trials(sweep_dir: Path) -> dict[str, dict]:
    out = {}
    for record in sorted((sweep_dir / "trials").glob("*/trial.json")):
        t = json.loads(record.read_text())
        lines = (record.parent / "metrics.jsonl").read_text().splitlines() if (record.parent / "metrics.jsonl").exists() else []
        logged = [json.loads(line) for line in lines]
        t["epochs"] = [m for m in logged if "event" not in m]
        t["steps_redone"] = sum(m.get("steps_redone", 0) for m in logged if m.get("event") == "restart")
        position = (record.parent / "position").read_text().split() if (record.parent / "position").exists() else []
        # Steps trained into an epoch that was never finished (a halted trial that was then stopped).
        t["steps_past"] = int(position[1]) if position and int(position[0]) == len(t["epochs"]) else 0
        t["started"] = min((p.stat().st_mtime for p in record.parent.rglob("*")), default=0.0)
        t["ended"] = (record.parent / "metrics.jsonl").stat().st_mtime if lines else t["started"]
        out[t["trial"]] = t
    return out


def poll(stop: threading.Event, samples: list) -> None:
    import ray

    while not stop.is_set():
        samples.append((time.time(), ray.available_resources().get("CPU", 0.0)))
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--work", default="/tmp/rrdist-asha-study")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--grace", type=int, default=2)
    parser.add_argument("--reduction", type=float, default=3.0)
    parser.add_argument("--hb-grace", type=int, default=1)
    parser.add_argument("--hb-reduction", type=float, default=4.0)
    parser.add_argument("--sweeps", nargs="+", default=["hyperband", "fifo", "asha"], choices=["fifo", "asha", "hyperband"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray

    from rrdist.data.beton import prepare
    from rrdist.train.trainer import init_ray
    from rrdist.tune.driver import run_sweep

    work = Path(args.work)
    data = work / "data"
    subset(Path(args.root) / "cifar10-jpg", data / "tree", args.per_class)
    prepare("imagefolder", data / "tree", log=lambda *a: None)
    init_ray(None)
    total = ray.cluster_resources().get("CPU", 0.0)
    asha = {"asha": {"metric": "knn_acc", "mode": "max", "grace_period": args.grace,
                     "reduction_factor": args.reduction}}
    hyperband = {"hyperband": {"metric": "knn_acc", "mode": "max", "grace_period": args.hb_grace,
                               "reduction_factor": args.hb_reduction}}
    result = {"date": str(date.today()), "epochs": args.epochs, "per_class": args.per_class, "cpus": total,
              "grace": args.grace, "reduction": args.reduction, "hb_grace": args.hb_grace,
              "hb_reduction": args.hb_reduction}
    schedulers = {"fifo": "fifo", "asha": asha, "hyperband": hyperband}
    for name in args.sweeps:
        scheduler = schedulers[name]
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(space(f"study_{name}", args.epochs, scheduler)))
        samples, stop = [], threading.Event()
        watcher = threading.Thread(target=poll, args=(stop, samples), daemon=True)
        watcher.start()
        began = time.time()
        sweep_dir = run_sweep(path, root=str(data / "tree"), out=work / "sweeps", log=lambda *a: None)
        wall = time.time() - began
        time.sleep(3)
        stop.set()
        watcher.join()
        ts = trials(Path(sweep_dir))
        done = {n: t for n, t in ts.items() if t["status"] == "completed"}
        best = max(done.values(), key=lambda t: t["metrics"]["linear_acc"])
        # After each stopped trial, how long until the next trial started (its CPU given back and taken).
        starts = sorted(t["started"] for t in ts.values())
        gaps = [min((s - t["ended"] for s in starts if s >= t["ended"]), default=0.0)
                for t in ts.values() if t["status"] == "stopped"]
        result[name] = {
            "wall_s": round(wall, 1), "trial_epochs": sum(len(t["epochs"]) for t in ts.values()),
            "steps_per_epoch": max(t["epochs"][0]["steps"] for t in ts.values() if t["epochs"]),
            "steps_past_last_epoch": sum(t["steps_past"] for t in ts.values()),
            "steps_redone": sum(t["steps_redone"] for t in ts.values()),
            "completed": sorted(done), "stopped": sorted(n for n, t in ts.items() if t["status"] == "stopped"),
            "linear_acc": {n: round(100 * t["metrics"]["linear_acc"], 2) for n, t in done.items()},
            "knn_acc": {n: [round(100 * e["knn_acc"], 2) for e in t["epochs"] if "knn_acc" in e] for n, t in ts.items()},
            "best": best["trial"], "best_linear_acc": round(100 * best["metrics"]["linear_acc"], 2),
            "free_cpus_at_end": samples[-1][1] if samples else None, "total_cpus": total,
            "next_start_after_stop_s": [round(g, 1) for g in gaps]}
        ledger = Path(sweep_dir) / "halving.yaml"
        if ledger.exists():  # which trials paused, resumed, were stopped where
            saved = yaml.safe_load(ledger.read_text())
            result[name]["rung_values"] = saved["values"]
            result[name]["events"] = [{k: e[k] for k in ("trial", "event", "rung") if k in e} for e in saved["events"]]
        print(json.dumps({name: result[name]}, indent=1), flush=True)
        if args.json:  # after every sweep: a cut-off study keeps what it measured
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
