"""Memory of `rrdist data prepare` and of a training worker on a tree of JPEGs, at two tree sizes.

Each command runs in its own process; every 0.1 s the memory of it and of each of its child
processes (FFCV's writer processes) is read from /proc: resident anonymous and shared-memory
pages (RssAnon + RssShmem), i.e. the peak RSS less the file pages that the page cache can drop at
any time (the .beton and the JPEGs mapped or read). VmHWM (peak RSS including those file pages) is
recorded beside it. The training worker is `rrdist pretrain --in-process` (the worker loop in one
process: FFCV loader, views, conv4, optimizer, checkpoints) stopped after `--train-s` seconds.

    python bench/jpeg_memory.py --tree DIR [DIR2 ...] [--train-s 120] [--batch-sizes 32 16] [--reuse] [--json F]

`--reuse` keeps data already prepared (no prepare row); several batch sizes separate the memory
the network's activations take from the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

KEYS = ("RssAnon", "RssShmem", "RssFile", "VmHWM")


def status(pid: int) -> dict[str, int]:
    """KB of each of KEYS for one process (empty if it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in KEYS:
            out[name] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    kids = [int(c) for c in found]
    return kids + [g for k in kids for g in children(k)]


def watch(cmd: list[str], stop_after: float | None, log: Path) -> dict:
    """Run `cmd`; per process: peak (RssAnon + RssShmem) in MB and peak VmHWM in MB."""
    peaks: dict[int, dict[str, float]] = {}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        began = time.time()
        while proc.poll() is None:
            for pid in [proc.pid, *children(proc.pid)]:
                s = status(pid)
                if not s:
                    continue
                own = (s.get("RssAnon", 0) + s.get("RssShmem", 0)) / 1024
                peak = peaks.setdefault(pid, {"own_mb": 0.0, "hwm_mb": 0.0, "main": pid == proc.pid})
                peak["own_mb"] = max(peak["own_mb"], own)
                peak["hwm_mb"] = max(peak["hwm_mb"], s.get("VmHWM", 0) / 1024)
            if stop_after is not None and time.time() - began > stop_after:
                proc.terminate()
                proc.wait(timeout=120)
                break
            time.sleep(0.1)
        seconds = time.time() - began
    main = next(v for v in peaks.values() if v["main"])
    helpers = [v for v in peaks.values() if not v["main"]]
    return {"main_peak_own_mb": round(main["own_mb"]), "main_peak_rss_mb": round(main["hwm_mb"]),
            "helpers": len(helpers), "helper_peak_own_mb": round(max((h["own_mb"] for h in helpers), default=0)),
            "seconds": round(seconds, 1), "exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, nargs="+", required=True)
    parser.add_argument("--train-s", type=float, default=120)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rrdist = [sys.executable, "-m", "rrdist"]
    rows = []
    for tree in args.tree:
        n = sum(1 for _ in (tree / "train").glob("*/*.jpg"))
        prep = None
        if not (args.reuse and (tree / "ffcv" / "imagefolder" / "manifest.json").is_file()):
            shutil.rmtree(tree / "ffcv", ignore_errors=True)
            prep = watch(rrdist + ["data", "prepare", "imagefolder", "--root", str(tree), "--storage", "jpeg"], None,
                         tree / "prepare.log")
        for M in args.batch_sizes:
            run = tree / "memory-run"
            shutil.rmtree(run, ignore_errors=True)
            train = watch(rrdist + ["pretrain", "--dataset", "imagefolder", "--root", str(tree), "--backbone", "conv4",
                                    "--K", "4", "--batch-size", str(M), "--epochs", "1", "--in-process", "--out",
                                    str(run)], args.train_s, tree / "train.log")
            position = run / "position"
            rows.append({"images": n, "batch_size": M, "prepare": prep, "train": train,
                         "train_position": position.read_text()[:200] if position.is_file() else None,
                         "beton_gb": round(sum(p.stat().st_size for p in (tree / "ffcv" / "imagefolder").glob("*.beton"))
                                           / 1e9, 2)})
            print(json.dumps(rows[-1]))
            prep = None
    record = {"benchmark": "jpeg_memory", "date": str(date.today()), "machine": platform.processor() or
              platform.machine(), "cores": os.cpu_count(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
