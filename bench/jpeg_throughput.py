"""K-view batches from ImageNet-sized JPEGs, side by side: rrdist's JPEG path against torchvision.

rrdist:    `rrdist data prepare imagefolder --storage jpeg` (longest side 256, quality 90); FFCV
           decodes each image once on its threads into a whole-image base (256 px for 224 px
           views, 110 px for 96 px views); `KViewAugment` makes the K views from it (on a CPU the
           fused kernel), each crop drawn in its image's own size.
reference: torchvision's `ImageFolder` over the original JPEGs, the paper's pipeline
           (RandomResizedCrop, flip, colour jitter p = 0.8, grayscale p = 0.2, ToTensor,
           Normalize) applied K times per image, a `DataLoader` with one worker per core. Also
           with the crop and flip only (no colour), which isolates decoding and cropping.

Also timed apart for rrdist: the loader alone (decode + base resize) and the views alone (on a
batch already decoded), to say where the time goes. Run:

    python bench/jpeg_throughput.py --tree DIR [--K 4] [--sizes 224 96] [--M 64] [--batches 20] [--json F]

where DIR holds train/<class>/*.jpg (e.g. from bench/make_jpeg_tree.py); it is prepared first if needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from rrdist.data.augment import KViewAugment
from rrdist.data.beton import prepare, split_path
from rrdist.data.keyed import ImageDraws
from rrdist.data.loader import base_side, image_loader
from kview_throughput import time_batches as rate  # (seconds to the first item, items/s over the next n)


class KTimes:
    def __init__(self, transform, K: int) -> None:
        self.transform, self.K = transform, K

    def __call__(self, image):
        return [self.transform(image) for _ in range(self.K)]


def reference_pipeline(size: int, mean, std, colour: bool):
    steps = [T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BILINEAR),
             T.RandomHorizontalFlip()]
    if colour:
        steps += [T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def bench_reference(tree: Path, size: int, K: int, M: int, n: int, cores: int, mean, std, colour: bool):
    torch.set_num_threads(1)
    data = ImageFolder(str(tree / "train"), transform=KTimes(reference_pipeline(size, mean, std, colour), K))
    loader = torch.utils.data.DataLoader(data, batch_size=M, shuffle=True, num_workers=cores, drop_last=True,
                                         persistent_workers=True, prefetch_factor=4)

    def batches():
        while True:
            for views, _ in loader:
                yield torch.cat(views, 0)

    return rate(batches(), n, lambda v: v.shape[0] // K)


def rrdist_batches(beton: Path, size: int, M: int, cores: int):
    loader = image_loader(beton, M, train=True, num_workers=cores, seed=0, indices=True, view_size=size)
    torch.set_num_threads(cores)
    epoch = 0
    while True:
        for images, _, indices in loader:
            yield epoch, images, indices, loader.sizes[indices]
        epoch += 1


def bench_rrdist(beton: Path, size: int, K: int, M: int, n: int, cores: int, mean, std) -> dict:
    augment = KViewAugment(size, mean, std)

    def views():
        for epoch, images, indices, sizes in rrdist_batches(beton, size, M, cores):
            yield augment(images, K, ImageDraws(0, epoch, indices), sizes)

    first, images_per_s = rate(views(), n, lambda v: v.shape[0] // K)
    _, decoded_per_s = rate(rrdist_batches(beton, size, M, cores), n, lambda b: b[1].shape[0])
    epoch, images, indices, sizes = next(rrdist_batches(beton, size, M, cores))
    images = images.clone()
    _, viewed_per_s = rate(iter(lambda: augment(images, K, ImageDraws(0, 0, indices), sizes), None), n,
                           lambda v: v.shape[0] // K)
    return {"images_per_s": images_per_s, "first_batch_s": first, "loader_only_images_per_s": decoded_per_s,
            "views_only_images_per_s": viewed_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    parser.add_argument("--M", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    began = time.perf_counter()
    manifest = prepare("imagefolder", args.tree, storage="jpeg", max_side=256, quality=90, image_size=224)
    prepare_s = time.perf_counter() - began
    beton = split_path(manifest, "train")
    mean, std = tuple(manifest["mean"]), tuple(manifest["std"])
    # The references run first: their DataLoaders fork, which should not follow numba's thread pool.
    reference = {(s, c): bench_reference(args.tree, s, args.K, args.M, args.batches, args.cores, mean, std, c)
                 for s in args.sizes for c in (True, False)}
    rows = []
    for size in args.sizes:
        ours = bench_rrdist(beton, size, args.K, args.M, args.batches, args.cores, mean, std)
        full, crop = reference[(size, True)][1], reference[(size, False)][1]
        row = {"view_size": size, "base_side": base_side(size, manifest["largest_side"]), "K": args.K, "M": args.M,
               "rrdist_batches_per_s": round(ours["images_per_s"] / args.M, 3),
               "reference_batches_per_s": round(full / args.M, 3),
               "reference_crop_flip_only_batches_per_s": round(crop / args.M, 3),
               "ratio": round(ours["images_per_s"] / full, 2), "ratio_to_crop_flip_only": round(ours["images_per_s"] / crop, 2),
               **{k: round(v, 2) for k, v in ours.items()}}
        rows.append(row)
        print(f"{size} px, K={args.K}, M={args.M}: rrdist {row['rrdist_batches_per_s']:.2f} batches/s | reference "
              f"{row['reference_batches_per_s']:.2f} (crop+flip only {row['reference_crop_flip_only_batches_per_s']:.2f})"
              f" | x{row['ratio']} (x{row['ratio_to_crop_flip_only']}); rrdist loader alone "
              f"{ours['loader_only_images_per_s']:.0f} img/s, views alone {ours['views_only_images_per_s']:.0f} img/s")
    record = {"benchmark": "jpeg_throughput", "date": str(date.today()), "machine": platform.processor() or
              platform.machine(), "cores": args.cores, "torch": torch.__version__, "batches": args.batches,
              "images": manifest["splits"]["train"]["n"], "prepare_s": round(prepare_s, 1),
              "beton_bytes": manifest["splits"]["train"]["bytes"], "device": "cpu", "rows": rows}
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
