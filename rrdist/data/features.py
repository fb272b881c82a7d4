"""An encoder's outputs over every image of a split, in file order, without augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rrdist.progress import Progress


@torch.no_grad()
def extract(backbone: torch.nn.Module, beton: Path, manifest: dict[str, Any], device: torch.device,
            batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] and labels [N] of every image of a split, in file order, no augmentation."""
    from rrdist.data.augment import KViewAugment
    from rrdist.data.loader import image_loader

    prep = KViewAugment(manifest["image_size"], tuple(manifest["mean"]), tuple(manifest["std"]))
    loader = image_loader(beton, batch_size, train=False, num_workers=1, device=device, drop_last=False)
    backbone = backbone.to(device).eval()
    dtype = next(backbone.parameters()).dtype  # float64 in a --precision fp64 pretraining
    feats, labels = [], []
    progress = Progress(f"features of {Path(beton).name}", len(loader), unit="batches")
    for i, (images, y) in enumerate(loader):
        feats.append(backbone(prep.plain(images.to(device)).to(dtype)).float().cpu())
        labels.append(y.cpu())
        progress.update(i + 1)
    progress.close()
    return torch.cat(feats), torch.cat(labels)
