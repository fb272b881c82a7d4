"""What each training step consumes: the loader's images turned into the method's views.

An image's views are keyed by (seed, epoch, image index, view index), whatever the worker count;
the method's shared draws (negatives, prior samples) come from its generator, reseeded every step
with (seed, epoch, step) on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch

from rrdist.data.worker_data import WorkerData


class Batch(NamedTuple):
    views: torch.Tensor  # [K * M, C, H, W], view-major
    targets: torch.Tensor  # [M]: what the method trains on (labels, pseudo-labels, -1 for unlabelled)
    labels: torch.Tensor  # [M]: the dataset's labels (the online probe's targets)
    indices: torch.Tensor  # [M]: training-image indices, on the host


class ViewBatches:
    def __init__(self, loader, augment: Callable, K: int, seed: int, device: torch.device,
                 generator: torch.Generator | None = None, targets: Callable | None = None,
                 precision: str = "fp32") -> None:
        self.loader, self.augment, self.K, self.seed, self.device = loader, augment, K, seed, device
        self.generator, self.targets, self.precision = generator, targets, precision
        self.sample: tuple[torch.Tensor, torch.Tensor] | None = None  # see `keep_sample`
        self.keep_sample = False  # True: keep a few images of the first batch and their views, for a picture

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[Batch]:
        """The epoch's batches (`epoch` counts from 0) from step `first_step` on (the loader resumed
        there); lazily, so each step's reseed precedes its forward."""
        from rrdist.data.keyed import ImageDraws, step_seed

        for step, (images, labels, indices) in enumerate(self.loader, start=first_step):
            if self.generator is not None:
                self.generator.manual_seed(step_seed(self.seed, epoch, step))
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            targets = labels if self.targets is None else self.targets(labels, indices.to(self.device, non_blocking=True))
            draws = ImageDraws(self.seed, epoch, indices)
            if self.loader.sizes is None:
                views = self.augment(images, self.K, draws)
            else:  # images of any size, stretched to one base: crops follow each image's own size
                views = self.augment(images, self.K, draws, self.loader.sizes[indices].to(self.device))
            if self.keep_sample and self.sample is None:
                self.sample = keep_sample(images, views, self.K)
            yield Batch(views.double() if self.precision == "fp64" else views, targets, labels, indices)


def keep_sample(images: torch.Tensor, views: torch.Tensor, K: int, count: int = 8, shown_views: int = 8):
    """Copies of up to `count` images [n, H, W, 3] and their first views [n, k, C, S, S] (normalised)."""
    n = min(count, images.shape[0])
    per_view = views.reshape(K, -1, *views.shape[1:])[:shown_views, :n]
    return images[:n].detach().clone(), per_view.transpose(0, 1).detach().float().clone()


class TrainingImages:
    """The un-augmented training images, for methods that look at all of them (DeepCluster)."""

    def __init__(self, data: WorkerData, device: torch.device) -> None:
        self.data, self.device = data, device

    @property
    def count(self) -> int:
        from rrdist.data.loader import split_size

        return split_size(self.data.train)

    def features(self, backbone: torch.nn.Module) -> torch.Tensor:
        """Features [N, D] of every training image in file order (eval mode, no augmentation)."""
        from rrdist.data.augment import KViewAugment
        from rrdist.data.features import extract

        prep = KViewAugment(self.data.image_size, self.data.mean, self.data.std)
        return extract(backbone, Path(self.data.train), prep, self.device, **self.data.decoding())[0]


def build_augment(kind: str, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                  any_size: bool = False):
    """The views a method trains on, with the dataset's image size and normalisation. For images
    of any size (`any_size`), the padded crop of CIFAR (crop_flip) becomes ImageNet's usual
    supervised augmentation: a random resized crop and a flip, no colour."""
    from rrdist.data.augment import KViewAugment
    from rrdist.data.crop_flip import CropFlip

    if kind == "crop_flip" and any_size:
        return KViewAugment(image_size, tuple(mean), tuple(std), jitter_p=0.0, gray_p=0.0)
    kinds = {"kview": KViewAugment, "crop_flip": CropFlip}
    return kinds[kind](image_size, tuple(mean), tuple(std))


def set_kernel_threads(n: int) -> None:
    """The fused CPU augmentation kernel uses numba's thread pool: keep it to this worker's CPUs."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
