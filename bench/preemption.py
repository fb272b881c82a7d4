"""Preemptions on real data, side by side: the CIFAR-10 check (conv4, K = 4, M = 64, 10 epochs)
run straight through, and the same run with its training worker killed (SIGKILL, as a lost
machine) every few minutes. Both checkpoint inside epochs every `--checkpoint-minutes`.

Recorded: per kill, the steps redone and the time from the kill to training again (the restart
events in metrics.jsonl); what the checkpoints cost (the epochs' `checkpoint_s` against their
`epoch_time_s`); the wall times; and both runs' linear accuracy. Run:

    python bench/preemption.py --root DATA [--kill-every 150] [--checkpoint-minutes 1] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def training_workers() -> list[int]:
    """Ray Train's worker processes on this machine (their process titles)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]


def pretrain(args, out: Path, kill_every: float | None) -> dict:
    command = [sys.executable, "-m", "rrdist", "pretrain", "--dataset", "cifar10", "--root", args.root,
               "--backbone", "conv4", "--K", "4", "--gamma", "2", "--batch-size", "64", "--epochs", str(args.epochs),
               "--seed", str(args.seed), "--checkpoint-every", "5", "--checkpoint-minutes", str(args.checkpoint_minutes),
               "--max-failures", "100", "--out", str(out)]
    began = time.monotonic()
    driver = subprocess.Popen(command, cwd=REPO, stdout=(out.parent / f"{out.name}.log").open("w"),
                              stderr=subprocess.STDOUT)
    kills = []

    def killer():
        while driver.poll() is None:
            time.sleep(kill_every)
            pids = training_workers()
            if pids and driver.poll() is None:
                os.kill(pids[0], signal.SIGKILL)
                kills.append(time.monotonic() - began)

    if kill_every:
        threading.Thread(target=killer, daemon=True).start()
    code = driver.wait()
    wall = time.monotonic() - began
    assert code == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in lines if "event" not in m]
    events = [m for m in lines if "event" in m]
    accuracy = subprocess.run([sys.executable, "-m", "rrdist", "evaluate", "linear", "--run", str(out)], cwd=REPO,
                              capture_output=True, text=True, check=True)
    result = json.loads((out / "eval" / "linear-trained-cifar10.json").read_text())
    return {"wall_s": round(wall, 1), "kills_at_s": [round(k, 1) for k in kills], "events": events,
            "epoch_time_s": sum(m["epoch_time_s"] for m in epochs),
            "checkpoint_s": sum(m.get("checkpoint_s", 0.0) for m in epochs),
            "loss_by_epoch": [round(m["loss"], 5) for m in epochs],
            "linear_accuracy": result["test_accuracy"], "evaluate_output": accuracy.stdout.strip()[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="/tmp/rrdist-preemption")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-every", type=float, default=150.0)
    parser.add_argument("--checkpoint-minutes", type=float, default=1.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)  # a fresh folder: no earlier run to resume
    straight = pretrain(args, out / "straight", None)
    killed = pretrain(args, out / "killed", args.kill_every)
    redone = [e["steps_redone"] for e in killed["events"]]
    record = {
        "date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "settings": vars(args), "straight": straight, "killed": killed,
        "summary": {
            "kills": len(killed["kills_at_s"]), "restarts_logged": len(killed["events"]),
            "steps_redone_per_kill": redone,
            "seconds_kill_to_training": [e["stalled_s"] for e in killed["events"]],
            "checkpoint_share_of_epoch_time": round(straight["checkpoint_s"] / straight["epoch_time_s"], 5),
            "accuracy_straight_killed": [straight["linear_accuracy"], killed["linear_accuracy"]],
            "wall_s_straight_killed": [straight["wall_s"], killed["wall_s"]],
        },
    }
    path = REPO / "bench" / "results" / f"preemption_cifar10_{date.today()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"], indent=2))
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
