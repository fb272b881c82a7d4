"""Data-parallel scaling on one machine: views/s and step time with 1 and 2 Ray Train workers.

Each setting is a real `rrdist pretrain` (Ray Train, DDP over gloo on CPU) on a CIFAR-10 subset
(an image folder of the first --per-class training images of each class), M images per optimizer
step over all workers (the same experiment on 1 and 2 workers), for --epochs epochs; the figures
are those of the last epoch (the first one carries FFCV's and the kernel's JIT). The cores are split
evenly between the workers, so the comparison shows what the split, the feature gather, the
gradient all-reduce and global BatchNorm cost, with the same total compute; 2 workers run with
global BatchNorm (the default) and with --no-sync-bn, to show its price. Run:

    python bench/scaling.py --root DATA [--K 4 32] [--per-class 500] [--epochs 2]

DATA holds CIFAR-10's image tree (DATA/cifar10-jpg/train/<class>/*.jpg).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path


def subset(tree: Path, dest: Path, per_class: int) -> Path:
    """An image folder of the first `per_class` images of each class (symlinks)."""
    for split, n in (("train", per_class), ("test", max(10, per_class // 10))):
        for cls in sorted((tree / split).iterdir()):
            out = dest / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for img in sorted(cls.iterdir())[:n]:
                (out / img.name).symlink_to(img.resolve())
    return dest


def run(root: Path, out: Path, K: int, workers: int, cores: int, epochs: int, M: int, sync_bn: bool = True) -> dict:
    cmd = [sys.executable, "-m", "rrdist", "pretrain", "--dataset", "imagefolder", "--root", str(root),
           "--backbone", "conv4", "--K", str(K), "--batch-size", str(M), "--epochs", str(epochs),
           "--workers", str(workers), "--cpus-per-worker", str(cores // workers), "--loader-workers", "1",
           "--checkpoint-every", str(epochs), "--out", str(out), "--sync-bn" if sync_bn else "--no-sync-bn"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"K": K, "workers": workers, "cpus_per_worker": cores // workers, "M": M, "sync_bn": sync_bn,
            "views_per_s": round(last["views_per_s"]),
            "step_s": round(last["epoch_time_s"] / last["steps"], 4), "steps": last["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding cifar10-jpg/")
    parser.add_argument("--K", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--M", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="rrscale") as scratch:
        data = subset(Path(args.root) / "cifar10-jpg", Path(scratch) / "data", args.per_class)
        subprocess.run([sys.executable, "-m", "rrdist", "data", "prepare", "imagefolder", "--root", str(data)],
                       check=True, stdout=subprocess.DEVNULL)
        for K in args.K:
            for workers, sync_bn in ((1, True), (2, True), (2, False)):
                row = run(data, Path(scratch) / f"run-k{K}-w{workers}-{sync_bn}", K, workers, args.cores, args.epochs,
                          args.M, sync_bn)
                rows.append(row)
                bn = "global BN" if sync_bn or workers == 1 else "per-worker BN"
                print(f"K={K:3d} workers={workers} x {row['cpus_per_worker']} CPU, {bn:13s}: {row['views_per_s']:8d} "
                      f"views/s, {row['step_s'] * 1000:7.1f} ms/step, {row['steps']} steps/epoch (M={args.M})")
    record = {"benchmark": "scaling", "date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "cores": args.cores, "device": "cpu", "images": 10 * args.per_class, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
