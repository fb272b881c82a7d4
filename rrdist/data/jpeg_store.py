"""Writing a listed split (image files of any size) as JPEG records, one image at a time.

Each image is read, reduced to a maximum side (aspect kept) and JPEG-encoded by FFCV's writer in
its worker processes; no split is ever held in memory. FFCV's writer waits for every image, so an
image that fails is recorded (in a file beside the output) and replaced by a placeholder; the
output is then discarded and the first failure reported as one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rrdist import atomic
from rrdist.data.datasets import FileSplit
from rrdist.errors import DataError, first_line

MEAN_SAMPLE = 1000  # images whose pixels give an image tree's normalisation


def load_image(path: Path, max_side: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file, its longer side reduced to at most `max_side`."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when it is large
        img = img.convert("RGB")
        if max(img.size) > max_side:
            scale = max_side / max(img.size)
            size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
            img = img.resize(size, Image.BILINEAR, reducing_gap=3.0)  # antialiased
        return np.asarray(img, dtype=np.uint8)


class ListedImages:
    """What FFCV's writer indexes: (image, label, index) of a listed split; a failure is noted, not raised."""

    def __init__(self, split: FileSplit, max_side: int, failures: Path) -> None:
        self.split, self.max_side, self.failures = split, max_side, str(failures)

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int):
        path = self.split.files[i]
        try:
            image = load_image(path, self.max_side)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            line = f"{path}\t{type(e).__name__}: {first_line(e)}\n"
            fd = os.open(self.failures, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())  # one write per line: lines of several processes do not mix
            finally:
                os.close(fd)
            image = np.zeros((8, 8, 3), np.uint8)
        return image, int(self.split.labels[i]), i


def write_jpeg_split(path: Path, split: FileSplit, max_side: int, quality: int, num_workers: int) -> None:
    """Write `split` to the .beton `path` (atomically), images as JPEG of at most `max_side`."""
    from rrdist.data.ffcv_import import dataset_writer, load_ffcv

    load_ffcv()
    from ffcv.fields import IntField, RGBImageField

    DatasetWriter = dataset_writer()

    fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=quality), "label": IntField(),
              "index": IntField()}
    failures = path.parent / f".{path.name}.failures"
    failures.unlink(missing_ok=True)
    try:
        with atomic.atomic_path(path) as tmp:
            images = ListedImages(split, max_side, failures)
            DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(images, chunksize=64)
            if failures.is_file():
                lines = failures.read_text().splitlines()
                bad, reason = lines[0].split("\t", 1)
                raise DataError(f"cannot read image {bad} ({reason}; {len(lines)} unreadable in all): remove or "
                                f"replace it, then prepare again")
    finally:
        failures.unlink(missing_ok=True)


def measure_normalisation(split: FileSplit, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels of a seeded sample of a split's images (at most
    MEAN_SAMPLE, read small: the statistics of a downscaled image are those of the image)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split.files), size=min(MEAN_SAMPLE, len(split.files)), replace=False)
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in sorted(chosen):
        try:
            pixels = load_image(split.files[i], 64).reshape(-1, 3).astype(np.float64) / 255.0
        except Exception as e:
            raise DataError(f"cannot read image {split.files[i]} ({type(e).__name__}: {first_line(e)}): remove or replace "
                            f"it, then prepare again") from None
        total += pixels.sum(0)
        total_sq += (pixels ** 2).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-6))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in np.maximum(std, 1e-3))
