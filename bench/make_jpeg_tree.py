"""A tree of ImageNet-sized JPEGs for the JPEG-path benchmarks, made from CIFAR-10.

Each CIFAR-10 training image is enlarged to a random ImageNet-like size (longer side 330-500 px,
any aspect between 3:4 and 4:3 either way) and given texture (per-pixel noise and fine stripes), so
that at JPEG quality 92 a file is about 110 KB, as ILSVRC-2012's are (mean 110 KB at about
400 x 350). Labels are CIFAR-10's classes; the images cycle through the 50,000 CIFAR ones.

    python bench/make_jpeg_tree.py --cifar CIFAR_JPEG_TREE --out DIR --train 10000 --test 1000 [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image


def sources(cifar: Path, split: str) -> list[tuple[Path, str]]:
    return [(f, d.name) for d in sorted((cifar / split).iterdir()) for f in sorted(d.iterdir())]


TEXTURE: list[np.ndarray] = []  # per process: noise and fine stripes, 640 x 640, cut at random offsets


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    if not TEXTURE:
        bank = np.random.default_rng(os.getpid())
        yy, xx = np.mgrid[0:640, 0:640]
        for _ in range(4):
            stripes = 10 * np.sin(xx * bank.uniform(0.6, 1.4) + yy * bank.uniform(0.3, 0.9))[..., None]
            TEXTURE.append((stripes + bank.normal(0, 32, size=(640, 640, 3))).astype(np.float32))
    tile = TEXTURE[int(rng.integers(len(TEXTURE)))]
    top, left = int(rng.integers(0, 640 - h + 1)), int(rng.integers(0, 640 - w + 1))
    return tile[top:top + h, left:left + w]


def make(job: tuple[Path, str, Path, int]) -> int:
    source, label, out_dir, i = job
    rng = np.random.default_rng(i)
    long_side = int(rng.integers(330, 501))
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    image = np.asarray(Image.open(source).convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32)
    image = image + texture(rng, h, w)
    target = out_dir / label / f"{i:06d}.jpg"
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(target, quality=92)
    return target.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=Path, required=True, help="cifar10-jpg/ with train/<class>/ and test/<class>/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=1_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    jobs = []
    for split, count in (("train", args.train), ("test", args.test)):
        pool = sources(args.cifar, split)
        for _, label in pool:
            (args.out / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            source, label = pool[(i * 7919) % len(pool)]  # a stride through the classes
            jobs.append((source, label, args.out / split, i))
    with Pool(args.jobs) as workers:
        sizes = workers.map(make, jobs, chunksize=64)
    print(f"{len(sizes)} images, {np.mean(sizes) / 1e3:.0f} KB on average, {sum(sizes) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
