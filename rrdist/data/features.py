"""An encoder's outputs over a split's images (all of them, or a subset), without augmentation."""

from __future__ import annotations

from pathlib import Path
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
