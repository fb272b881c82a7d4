"""K-view batch production, side by side: rrdist against the paper's reference pipeline.

rrdist:    FFCV decodes each image once (raw .beton), the K views are made batched on the device
           (on a CPU by the fused kernel of rrdist/data/augment_cpu.py).
reference: appendix D.1/D.2 - a Dataset whose __getitem__ applies the torchvision PIL transforms
           K times to each image, read by a torch DataLoader with one worker process per core.

Both read the same CIFAR-10 training images, M = 64 images per batch, on the same cores.
Views/s are measured after a warm-up (FFCV's JIT and the DataLoader's worker start are
reported apart). Run:

    python bench/kview_throughput.py --root DATA [--K 4 32] [--batches 30]

where DATA holds CIFAR-10 (`rrdist data prepare cifar10 --root DATA` is run if needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from rrdist.data.augment import KViewAugment
from rrdist.data.keyed import ImageDraws
from rrdist.data.beton import ensure_prepared, split_path
from rrdist.data.datasets import get_spec
from rrdist.data.loader import image_loader
from reference import CIFAR_MEAN, CIFAR_STD, reference_loader


def time_batches(batches, n: int, views_per_batch) -> tuple[float, float]:
    """(seconds to the first batch, steady views/s over the next n batches)."""
    it = iter(batches)
    start = time.perf_counter()
    views_per_batch(next(it))
    first = time.perf_counter() - start
    start, views = time.perf_counter(), 0
    for _ in range(n):
        views += views_per_batch(next(it))
    return first, views / (time.perf_counter() - start)


def bench_rrdist(beton: Path, K: int, M: int, n: int, cores: int) -> tuple[float, float]:
    torch.set_num_threads(cores)
    augment = KViewAugment(32, CIFAR_MEAN, CIFAR_STD)

    def epochs():
        loader = image_loader(beton, M, train=True, num_workers=cores, seed=0, indices=True)
        torch.set_num_threads(cores)
        epoch = 0
        while True:
            for images, _, indices in loader:  # each view keyed by its image, as in training
                yield augment(images, K, ImageDraws(0, epoch, indices))
            epoch += 1

    return time_batches(epochs(), n, lambda v: v.shape[0])


def bench_reference(images: np.ndarray, labels: np.ndarray, K: int, M: int, n: int, cores: int):
    torch.set_num_threads(1)
    loader = reference_loader(images, labels, K, M, cores)

    def batches():
        while True:
            for views, _ in loader:
                yield torch.cat(views, 0)  # the reference training step's first line

    return time_batches(batches(), n, lambda v: v.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--K", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--M", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    manifest = ensure_prepared("cifar10", args.root)
    beton = split_path(manifest, "train")
    train = get_spec("cifar10").reader(Path(args.root).resolve(), False, 32)["train"]
    # The reference runs first: its DataLoader forks worker processes, which should not happen
    # after the fused kernel has started its thread pool.
    reference = {K: bench_reference(train.images, train.labels, K, args.M, args.batches, args.cores) for K in args.K}
    rows = []
    for K in args.K:
        r_first, r_rate = bench_rrdist(beton, K, args.M, args.batches, args.cores)
        p_first, p_rate = reference[K]
        rows.append({"K": K, "M": args.M, "rrdist_views_per_s": round(r_rate), "reference_views_per_s": round(p_rate),
                     "ratio": round(r_rate / p_rate, 2), "rrdist_first_batch_s": round(r_first, 2),
                     "reference_first_batch_s": round(p_first, 2)})
        print(f"K={K:3d} M={args.M}: rrdist {r_rate:10.0f} views/s | reference {p_rate:9.0f} views/s | "
              f"x{r_rate / p_rate:.1f}   (first batch: rrdist {r_first:.1f} s incl. FFCV and kernel JIT, "
              f"reference {p_first:.1f} s)")
    record = {"benchmark": "kview_throughput", "date": str(date.today()), "machine": platform.processor() or
              platform.machine(), "cores": args.cores, "torch": torch.__version__, "batches": args.batches,
              "device": "cpu", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
