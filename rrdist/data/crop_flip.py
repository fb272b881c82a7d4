"""The standard CIFAR augmentation of the supervised and rotation baselines (appendix A.5):
random crop of the image padded with `padding` black pixels, horizontal flip with p = 0.5.

Exact integer pixel moves, so it is one batched gather: every view's rows and columns are
index vectors into the padded batch. No Python loop over images or views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rrdist.data.keyed import ImageDraws, draw_uniforms

UNIFORMS = 3  # per view: top, left, flip


@dataclass
class CropFlipParams:
    top: torch.Tensor  # [n] offset into the padded image, 0..2 * padding
    left: torch.Tensor
    flip: torch.Tensor  # [n] bool


@dataclass
class CropFlip:
    out_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: int = 4
    flip_p: float = 0.5

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> CropFlipParams:
        return self.params(torch.rand(n, UNIFORMS, generator=generator, device=device))

    def params(self, u: torch.Tensor) -> CropFlipParams:
        """Parameters of n views from their uniforms u [n, UNIFORMS] (one row per view)."""
        span = 2 * self.padding + 1
        offsets = torch.floor(u[:, :2] * span).to(torch.int64).clamp_(max=span - 1)
        return CropFlipParams(top=offsets[:, 0], left=offsets[:, 1], flip=u[:, 2] < self.flip_p)

    def apply(self, images: torch.Tensor, p: CropFlipParams) -> torch.Tensor:
        """uint8 [M, H, W, 3] and n = K * M view-major parameters -> normalised [n, 3, S, S], channels-last."""
        M = images.shape[0]
        S, pad = self.out_size, self.padding
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        padded = F.pad(x, (pad, pad, pad, pad))  # black border, as torchvision pads a PIL image
        steps = torch.arange(S, device=images.device)
        rows = p.top[:, None] + steps  # [n, S]
        cols = torch.where(p.flip[:, None], p.left[:, None] + (S - 1 - steps), p.left[:, None] + steps)
        image = (torch.arange(len(p.top), device=images.device) % M)[:, None, None]
        views = padded.permute(0, 2, 3, 1)[image, rows[:, :, None], cols[:, None, :]]  # [n, S, S, 3]
        mean = torch.tensor(self.mean, device=images.device)
        std = torch.tensor(self.std, device=images.device)
        return ((views - mean) / std).permute(0, 3, 1, 2)

    def __call__(self, images: torch.Tensor, K: int, source: torch.Generator | ImageDraws) -> torch.Tensor:
        u = draw_uniforms(source, K, images.shape[0], UNIFORMS, images.device)
        return self.apply(images, self.params(u))
