"""An encoder's outputs over a split's images (all of them, or a subset), without augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rrdist.progress import Progress


@torch.no_grad()
def embed(backbone: torch.nn.Module, loader, prep, device: torch.device,
          title: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] and labels [N] on `device` of every batch of a sequential `image_loader`,
    in its order, the backbone in eval mode (its train/eval mode is restored after); `prep`
    (a `KViewAugment`) turns the loader's uint8 images into normalised inputs."""
    was_training = backbone.training
    backbone.eval()
    dtype = next(backbone.parameters()).dtype  # float64 in a --precision fp64 pretraining
    feats, labels = [], []
    progress = Progress(title, len(loader), unit="batches")
    try:
        for i, (images, y) in enumerate(loader):
            feats.append(backbone(prep.plain(images.to(device)).to(dtype)).float())
            labels.append(y.to(device))
            progress.update(i + 1)
    finally:
        backbone.train(was_training)
        progress.close()
    return torch.cat(feats), torch.cat(labels)


def extract(backbone: torch.nn.Module, beton: Path, prep, device: torch.device, batch_size: int = 512,
            view_size: int | None = None, eval_crop: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] and labels [N], on the CPU, of every image of a split in file order (`prep`: as
    in `embed`; `view_size`, `eval_crop`: as in `image_loader`)."""
    from rrdist.data.loader import image_loader

    loader = image_loader(beton, batch_size, train=False, num_workers=1, device=device, drop_last=False,
                          view_size=view_size, eval_crop=eval_crop)
    feats, labels = embed(backbone.to(device), loader, prep, device, f"features of {Path(beton).name}")
    return feats.cpu(), labels.cpu()


@torch.no_grad()
def extract_to_files(backbone: torch.nn.Module, beton: Path, prep, device: torch.device, folder: Path,
                     batch_size: int = 512, view_size: int | None = None, eval_crop: float = 1.0) -> None:
    """Features of every image of a split, in file order, written batch by batch to
    `folder`/features.npy (float32 [N, D]) and labels.npy (int64 [N]): the split's features are
    never all in memory (1.28 million 2,048-d features are 10 GB). The folder appears whole or not at all."""
    import shutil
    import tempfile

    from rrdist.data.loader import image_loader, split_size

    n = split_size(beton)
    loader = image_loader(beton, batch_size, train=False, num_workers=1, device=device, drop_last=False,
                          view_size=view_size, eval_crop=eval_crop)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
        feats, done = None, 0
        was_training = backbone.training
        backbone.eval()
        dtype = next(backbone.parameters()).dtype
        progress = Progress(f"features of {Path(beton).name}", len(loader), unit="batches")
        try:
            for i, (images, y) in enumerate(loader):
                out = backbone(prep.plain(images.to(device)).to(dtype)).float().cpu().numpy()
                if feats is None:
                    feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                                      shape=(n, out.shape[1]))
                feats[done:done + len(out)] = out
                labels[done:done + len(out)] = y.cpu().numpy()
                done += len(out)
                progress.update(i + 1)
        finally:
            backbone.train(was_training)
            progress.close()
        feats.flush()
        labels.flush()
        del feats, labels
        shutil.rmtree(folder, ignore_errors=True)  # an unreadable cache of the same key
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_feature_files(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of `extract_to_files`, mapped from disk, not read into memory (copy-on-write)."""
    feats = np.load(folder / "features.npy", mmap_mode="c")
    labels = np.load(folder / "labels.npy", mmap_mode="c")
    return torch.from_numpy(feats), torch.from_numpy(labels)
