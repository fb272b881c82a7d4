"""Finetuning (appendix A.6): the pretrained backbone and a linear classifier trained together.

Adam with lr 1e-4 for the backbone and 1e-3 for the classifier, mini-batch 32, 100 epochs, both
lrs divided by 10 at 50% and 75% of the epochs. Augmentations of Ji et al. (2019): with p = 0.5 a
random affine map (rotation +-18 degrees, scale 0.9-1.1, translation up to 0.1 of the size,
shear +-10 degrees, bilinear), and with p = 0.5 a cutout of a 32x32 square (of the image's size
at most); both per image, batched. The finetuned backbone is saved beside the result; the run's
own backbone.pt is left as it is.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rrdist import atomic
from rrdist.eval.results import at_least, evaluation_device, positive, result_stem
from rrdist.progress import Progress


@dataclass
class FinetuneSettings:
    epochs: int = 100
    batch_size: int = 32
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    seed: int = 0

    def validate(self) -> "FinetuneSettings":
        at_least(vars(self), {"epochs": 1, "batch_size": 1})
        positive({"backbone_lr": self.backbone_lr, "head_lr": self.head_lr})
        return self


def affine_matrices(n: int, generator: torch.Generator, p: float = 0.5, degrees: float = 18.0,
                    scale=(0.9, 1.1), translate: float = 0.1, shear: float = 10.0) -> torch.Tensor:
    """[n, 2, 3] sampling matrices (normalised coordinates, output -> input) of random affine maps;
    the identity for the images (1 - p of them) that are left as they are."""
    u = torch.rand(n, 6, generator=generator)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * degrees)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    tx, ty = (2 * u[:, 2] - 1) * translate * 2, (2 * u[:, 3] - 1) * translate * 2  # normalised: the size is 2
    sh = torch.deg2rad((2 * u[:, 4] - 1) * shear)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map A = R(angle) @ Shear_x(sh) * s, then translate; sample with its inverse
    a = torch.stack([torch.stack([cos, cos * torch.tan(sh) - sin], 1), torch.stack([sin, sin * torch.tan(sh) + cos], 1)], 1)
    a = a * s[:, None, None]
    inv = torch.linalg.inv(a)
    t = torch.stack([tx, ty], 1)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], dim=2)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    return torch.where((u[:, 5] < p)[:, None, None], theta, identity)


def cutout_mask(n: int, height: int, width: int, generator: torch.Generator, size: int = 32,
                p: float = 0.5) -> torch.Tensor:
    """[n, 1, H, W] masks, 0 inside a size x size square at a random centre (for p of the images)."""
    u = torch.rand(n, 3, generator=generator)
    cy, cx = (u[:, 0] * height).long(), (u[:, 1] * width).long()
    ys, xs = torch.arange(height), torch.arange(width)
    inside_y = (ys[None] >= (cy - size // 2)[:, None]) & (ys[None] < (cy + size - size // 2)[:, None])
    inside_x = (xs[None] >= (cx - size // 2)[:, None]) & (xs[None] < (cx + size - size // 2)[:, None])
    square = inside_y[:, :, None] & inside_x[:, None, :] & (u[:, 2] < p)[:, None, None]
    return (~square).float()[:, None]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Normalised [n, 3, H, W] images: random affine (p = 0.5), then cutout (p = 0.5)."""
    n, _, h, w = x.shape
    theta = affine_matrices(n, generator).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x * cutout_mask(n, h, w, generator, size=min(32, h, w)).to(x.device, x.dtype)


def training_inputs(manifest: dict[str, Any], sizes: torch.Tensor | None, prep, seed: int, device: torch.device):
    """The augmented inputs of a training batch: (uint8 images, indices) -> normalised [B, 3, S, S].
    Images of any size come whole, stretched to a square: a random resized crop in each image's own
    size and a flip (ImageNet's finetuning augmentation) replace the affine-and-cutout of small images."""
    from rrdist.data.augment import KViewAugment

    if sizes is None:
        generator = torch.Generator().manual_seed(seed)
        return lambda images, indices: augment(prep.plain(images), generator)
    resized_crop = KViewAugment(manifest["image_size"], tuple(manifest["mean"]), tuple(manifest["std"]),
                                jitter_p=0.0, gray_p=0.0)
    generator = torch.Generator(device=device).manual_seed(seed)
    return lambda images, indices: resized_crop(images, 1, generator, sizes[indices].to(device))


def evaluate_finetune(run_dir: str | Path, dataset: str | None = None, root: str | None = None,
                      settings: FinetuneSettings | None = None, device: str | None = None,
                      log=print) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter

    from rrdist.data.augment import KViewAugment
    from rrdist.data.beton import ensure_prepared, split_path
    from rrdist.data.loader import decoding, image_loader
    from rrdist.eval.features import load_backbone
    from rrdist.schedules import step_lr

    settings = (settings or FinetuneSettings()).validate()
    dev = evaluation_device(device)
    run_dir = Path(run_dir).expanduser().resolve()
    backbone, cfg, _ = load_backbone(run_dir, "trained")
    manifest = ensure_prepared(dataset or cfg.dataset, root or cfg.root, log=log)
    torch.manual_seed(settings.seed)
    before = [p.detach().clone() for p in backbone.parameters()]
    backbone = backbone.to(dev)
    head = torch.nn.Linear(backbone.feature_size, manifest["num_classes"]).to(dev)
    groups = [{"params": backbone.parameters(), "lr": settings.backbone_lr, "base": settings.backbone_lr},
              {"params": head.parameters(), "lr": settings.head_lr, "base": settings.head_lr}]
    optimizer = torch.optim.Adam(groups)
    prep = KViewAugment(manifest["image_size"], tuple(manifest["mean"]), tuple(manifest["std"]))
    train = image_loader(split_path(manifest, "train"), settings.batch_size, train=True, seed=settings.seed,
                         device=dev, indices=True, **decoding(manifest))
    inputs = training_inputs(manifest, train.sizes, prep, settings.seed, dev)
    start = time.perf_counter()
    progress = Progress("finetuning", settings.epochs, unit="epochs")
    for epoch in range(settings.epochs):
        for group in optimizer.param_groups:
            group["lr"] = step_lr(group["base"], epoch, settings.epochs)
        backbone.train()
        for images, labels, indices in train:
            x = inputs(images.to(dev), indices)
            loss = F.cross_entropy(head(backbone(x)), labels.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        progress.update(epoch + 1, loss=float(loss.detach()))  # the epoch's last batch: one sync per epoch
    progress.close()
    backbone.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in image_loader(split_path(manifest, "test"), 256, train=False, drop_last=False, device=dev,
                                           **decoding(manifest)):
            correct += int((head(backbone(prep.plain(images.to(dev)))).argmax(1).cpu() == labels).sum())
            total += len(labels)
    change = math.sqrt(sum(float(((p.detach().cpu() - b) ** 2).sum()) for p, b in zip(backbone.parameters(), before)))
    name = manifest["dataset"]
    stem = result_stem(run_dir, f"finetune-{name}", asdict(settings))
    atomic.torch_save({"backbone": backbone.state_dict(), "config": cfg.to_dict()},
                      run_dir / "eval" / f"{stem}-backbone.pt")
    result = {"evaluation": "finetune", "dataset": name, "pretrain_dataset": cfg.dataset,
              "test_accuracy": correct / max(total, 1), "settings": asdict(settings),
              "backbone_change_l2": change, "fit_s": round(time.perf_counter() - start, 3)}
    atomic.write_json(run_dir / "eval" / f"{stem}.json", result)
    with SummaryWriter(str(run_dir / "tb")) as writer:
        writer.add_scalar(f"eval/finetune_{name}", result["test_accuracy"], cfg.epochs)
    return result
