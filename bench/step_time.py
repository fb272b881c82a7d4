"""Pretraining step time, side by side: rrdist against a reference step written from appendix D.3.

rrdist:    the worker loop's own step (`train_epoch`): FFCV batch, K views by the fused kernel
           (CPU) or batched tensor ops (GPU), channels-last backbone, pairs from cached indices,
           the head's first layer applied per view, loss, backward, Adam; metrics kept on the
           device.
reference: D.1-D.3: the PIL K-view Dataset read by a DataLoader with one worker per core, the
           Python loop over view pairs with torch.cat and torch.roll, the head on the full pair
           matrix, BCE, Adam, the accuracy computed every step and printed every 100.

Both: the same backbone, M images per batch, the same torch threads, the same CIFAR-10 images.
The loss is BCE on both sides (gamma = 0; the focal weight costs the same on either).
Before timing, one batch of features goes through both pair builders to check that they make
the same number of pairs with the same share of positives. Run:

    python bench/step_time.py --root DATA [--backbones conv4 resnet32] [--K 4 32] [--budget 20]

Each configuration runs 2 warm-up steps, then as many steps as fit in --budget seconds (3 to 50).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch

from rrdist.data.augment import KViewAugment
from rrdist.data.beton import ensure_prepared, split_path
from rrdist.data.datasets import get_spec
from rrdist.methods import build_method, make_config
from rrdist.models import build_backbone
from rrdist.train.batches import ViewBatches, set_kernel_threads
from rrdist.train.step import EpochSums, TrainStep, train_epoch
from reference import CIFAR_MEAN, CIFAR_STD, ReferenceRelationalReasoning, reference_loader

WARMUP = 2


def steps_for(seconds_per_step: float, budget: float) -> int:
    return int(min(50, max(3, budget // max(seconds_per_step, 1e-6))))


def check_pairs(backbone_name: str, K: int, M: int) -> dict:
    """Both pair builders on the same random features: pair count and positive share."""
    torch.manual_seed(0)
    cfg = make_config(backbone=backbone_name, K=K, batch_size=M)
    method = build_method(cfg, 10)
    z = torch.randn(K * M, method.backbone.feature_size)
    logits, targets, _ = method.relation_logits(z, M, K)
    ref = ReferenceRelationalReasoning(build_backbone(backbone_name), method.backbone.feature_size)
    pairs, ref_targets = ref.aggregate(z, K)
    row = {"pairs": len(targets), "reference_pairs": len(ref_targets), "positive_share": float(targets.mean()),
           "reference_positive_share": float(ref_targets.mean()), "expected_pairs": M * (K * K - K)}
    assert row["pairs"] == row["reference_pairs"] == row["expected_pairs"], row
    assert row["positive_share"] == row["reference_positive_share"] == 0.5, row
    return row


def bench_reference(images, labels, backbone_name: str, K: int, M: int, cores: int, budget: float) -> float:
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    model = ReferenceRelationalReasoning(backbone, backbone.feature_size).train()
    optimizer = torch.optim.Adam(model.parameters())
    batches = iter(reference_loader(images, labels, K, M, cores))
    for i in range(WARMUP):
        model.step(next(batches)[0], optimizer, i)
    start = time.perf_counter()
    model.step(next(batches)[0], optimizer, 1)
    n = steps_for(time.perf_counter() - start, budget)
    start = time.perf_counter()
    for i in range(n):
        model.step(next(batches)[0], optimizer, i + 1)
    return (time.perf_counter() - start) / n


def bench_rrdist(beton: Path, backbone_name: str, K: int, M: int, cores: int, budget: float,
                 precision: str = "fp32", compile: bool = False) -> float:
    from rrdist.data.loader import image_loader

    torch.set_num_threads(cores)
    set_kernel_threads(cores)
    torch.manual_seed(0)
    cfg = make_config(backbone=backbone_name, K=K, batch_size=M, gamma=0.0)
    method = build_method(cfg, 10).to(memory_format=torch.channels_last).train()
    optimizer = method.configure_optimizer()
    if compile:
        method.backbone.compile()
    method.generator = torch.Generator()
    augment = KViewAugment(32, CIFAR_MEAN, CIFAR_STD)
    loader = image_loader(beton, M, train=True, num_workers=cores, seed=0, indices=True)
    torch.set_num_threads(cores)
    device = torch.device("cpu")
    views = ViewBatches(loader, augment, K, 0, device, method.generator, precision=precision)
    step = TrainStep(method, optimizer, precision)

    def batches():
        epoch = 0
        while True:
            yield from views.epoch(epoch)
            epoch += 1

    stream = batches()

    def run(n: int) -> float:
        start = time.perf_counter()
        sums = train_epoch(step, itertools.islice(stream, n), EpochSums(method.metric_names, device))
        assert int(sums.totals()["steps"]) == n
        return (time.perf_counter() - start) / n

    run(WARMUP)
    n = steps_for(run(1), budget)
    return run(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--backbones", nargs="+", default=["conv4", "resnet32"])
    parser.add_argument("--K", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--M", type=int, default=64)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per side and setting")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action="store_true", help="also time rrdist with --compile (its compile is warm-up)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    manifest = ensure_prepared("cifar10", args.root)
    beton = split_path(manifest, "train")
    train = get_spec("cifar10").reader(Path(args.root).resolve(), False, 32)["train"]
    settings = list(itertools.product(args.backbones, args.K))
    # The reference runs first: its DataLoader forks worker processes, which should not happen
    # after the fused kernel has started its thread pool.
    reference = {s: bench_reference(train.images, train.labels, *s, args.M, args.cores, args.budget) for s in settings}
    rows = []
    for backbone_name, K in settings:
        pairs = check_pairs(backbone_name, K, args.M)
        ours = bench_rrdist(beton, backbone_name, K, args.M, args.cores, args.budget)
        ref = reference[(backbone_name, K)]
        rows.append({"backbone": backbone_name, "K": K, "M": args.M, "rrdist_step_s": round(ours, 4),
                     "reference_step_s": round(ref, 4), "ratio": round(ref / ours, 2), **pairs})
        print(f"{backbone_name:9s} K={K:3d} M={args.M}: rrdist {ours * 1000:8.1f} ms/step | reference "
              f"{ref * 1000:8.1f} ms/step | x{ref / ours:.1f}   pairs {pairs['pairs']} = {pairs['reference_pairs']}, "
              f"positives {pairs['positive_share']:.2f} = {pairs['reference_positive_share']:.2f}")
        if args.compile:
            compiled = bench_rrdist(beton, backbone_name, K, args.M, args.cores, args.budget, compile=True)
            rows[-1].update(rrdist_compile_step_s=round(compiled, 4), compile_ratio=round(ref / compiled, 2))
            print(f"{backbone_name:9s} K={K:3d} M={args.M}: rrdist --compile {compiled * 1000:8.1f} ms/step | "
                  f"x{ref / compiled:.1f}")
    record = {"benchmark": "step_time", "date": str(date.today()), "machine": platform.processor() or
              platform.machine(), "cores": args.cores, "torch": torch.__version__, "device": "cpu", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
