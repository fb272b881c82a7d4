"""Batched K-view augmentation on the training device (appendix A.3 of the paper).

Every view gets its own random parameters, drawn in one go for the whole batch:
random resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear) and horizontal flip as one batched
resampling, then colour jitter (brightness, contrast, saturation 0.8, hue 0.2; applied with
p=0.8, the four operations in a random order per view, as torchvision does), grayscale with
p=0.2, and per-dataset normalisation. No Python loop over images or views.

The colour operations follow torchvision's tensor definitions, so each can be checked against
torchvision on the same inputs and factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rrdist.data.keyed import ImageDraws, draw_uniforms

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
TRIES = 10  # torchvision's random-resized-crop tries before it falls back to the centre
# Uniform numbers per view: crop areas and aspect ratios (TRIES each), top, left, flip, jitter,
# four jitter factors, four order keys, grayscale.
UNIFORMS = 2 * TRIES + 4 + 4 + 4 + 1
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


# --------------------------------------------------------------------------- colour operations
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of [N, 3, H, W] images in [0, 1] by `shift` (fraction of a turn), via HSV."""
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    r, g, b = x.unbind(1)
    chroma = maxc - minc
    gray = chroma == 0
    sat = chroma / torch.where(gray, torch.ones_like(maxc), maxc)
    div = torch.where(gray, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB in closed form: channel c = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n_c + 6h) mod 6,
    # with n = 5, 3, 1 for r, g, b (the six-sector table, without building it).
    h6 = hue * 6.0
    vs = maxc * sat
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - vs * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1)


OPERATIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
IDENTITY = (1.0, 1.0, 1.0, 0.0)


# --------------------------------------------------------------------------- parameters
@dataclass
class ViewParams:
    """Random parameters of n views (one row each)."""

    top: torch.Tensor  # crop box in source pixels
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: colour jitter applied
    factors: torch.Tensor  # [n, 4]: brightness, contrast, saturation, hue
    order: torch.Tensor  # [n, 4]: a permutation of the four jitter operations
    gray: torch.Tensor  # bool


@dataclass
class KViewAugment:
    """Makes K augmented views of each image of a uint8 batch, on the batch's device."""

    out_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    gray_p: float = 0.2
    fused_cpu: bool = True  # CPU tensors: the fused kernel (False: the tensor path, e.g. to compare)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator,
               device: torch.device) -> ViewParams:
        """Parameters of n views drawn from a generator."""
        return self.params(torch.rand(n, UNIFORMS, generator=generator, device=device), height, width)

    def params(self, u: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor) -> ViewParams:
        """Parameters of n views from their uniforms u [n, UNIFORMS], with torchvision's
        random-resized-crop rule (10 tries, then the centre). Each view's parameters depend on its
        own row of u only, so a view keyed by its image is the same in any batch. `height` and
        `width`: the image size, or each view's ([n] tensors)."""
        device = u.device
        cursor = 0

        def take(k: int = 0) -> torch.Tensor:
            """The next k columns of u ([n, k]), or with k = 0 the next one ([n])."""
            nonlocal cursor
            block = u[:, cursor:cursor + max(k, 1)]
            cursor += max(k, 1)
            return block if k else block[:, 0]

        if torch.is_tensor(height):  # every view its own image size
            top, left, h, w = self._crops_of_sizes(take(TRIES), take(TRIES), take(), take(), height, width)
        else:
            top, left, h, w = self._crops(take(TRIES), take(TRIES), take(), take(), height, width)
        lo = torch.tensor([1 - self.brightness, 1 - self.contrast, 1 - self.saturation, -self.hue], device=device)
        hi = torch.tensor([1 + self.brightness, 1 + self.contrast, 1 + self.saturation, self.hue], device=device)
        lo[:3].clamp_(min=0.0)
        factors = lo + (hi - lo) * take(4)
        return ViewParams(
            top=top, left=left, height=h, width=w,
            flip=take() < self.flip_p,
            jitter=take() < self.jitter_p,
            factors=factors,
            order=torch.argsort(take(4), dim=1, stable=True),
            gray=take() < self.gray_p,
        )

    def _crops(self, area_u, aspect_u, top_u, left_u, height: int, width: int):
        """torchvision's random-resized-crop boxes (top, left, h, w) in an image of one size."""
        area = height * width
        target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * area_u)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * aspect_u)
        w = torch.round(torch.sqrt(target_area * aspect))
        h = torch.round(torch.sqrt(target_area / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first valid try
        any_ok = ok.any(dim=1)
        w = w.gather(1, first).squeeze(1)
        h = h.gather(1, first).squeeze(1)
        # Fallback (no valid try): the whole image, cropped to the nearest allowed ratio.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(height * self.ratio[1])), height
        else:
            fw, fh = width, height
        w = torch.where(any_ok, w, torch.full_like(w, fw))
        h = torch.where(any_ok, h, torch.full_like(h, fh))
        top = torch.floor(top_u * (height - h + 1))
        left = torch.floor(left_u * (width - w + 1))
        top = torch.where(any_ok, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(any_ok, left, torch.full_like(left, (width - fw) // 2))
        return top, left, h, w

    def _crops_of_sizes(self, area_u, aspect_u, top_u, left_u, height: torch.Tensor, width: torch.Tensor):
        """The same rule where each view has its own image size (height, width: [n])."""
        height, width = height.to(area_u.device, torch.float32), width.to(area_u.device, torch.float32)
        hs, ws = height[:, None], width[:, None]
        target_area = hs * ws * (self.scale[0] + (self.scale[1] - self.scale[0]) * area_u)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * aspect_u)
        w = torch.round(torch.sqrt(target_area * aspect))
        h = torch.round(torch.sqrt(target_area / aspect))
        ok = (w > 0) & (w <= ws) & (h > 0) & (h <= hs)
        first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)
        any_ok = ok.any(dim=1)
        w = w.gather(1, first).squeeze(1)
        h = h.gather(1, first).squeeze(1)
        in_ratio = width / height
        narrow, wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
        fw = torch.where(wide, torch.round(height * self.ratio[1]), width)
        fh = torch.where(narrow, torch.round(width / self.ratio[0]), height)
        w = torch.where(any_ok, w, fw)
        h = torch.where(any_ok, h, fh)
        top = torch.where(any_ok, torch.floor(top_u * (height - h + 1)), torch.div(height - fh, 2, rounding_mode="floor"))
        left = torch.where(any_ok, torch.floor(left_u * (width - w + 1)), torch.div(width - fw, 2, rounding_mode="floor"))
        return top, left, h, w

    @staticmethod
    def onto_base(p: ViewParams, height: torch.Tensor, width: torch.Tensor, base_h: int, base_w: int) -> ViewParams:
        """Boxes drawn in each image's own size, moved onto the base image it was stretched to."""
        sy = base_h / height.to(p.top.device, torch.float32)
        sx = base_w / width.to(p.top.device, torch.float32)
        p.top, p.height, p.left, p.width = p.top * sy, p.height * sy, p.left * sx, p.width * sx
        return p

    # ----------------------------------------------------------------------- application
    def crop_grid(self, p: ViewParams, height: int, width: int) -> torch.Tensor:
        """Sampling grid [n, S, S, 2] that crops, resizes (bilinear) and flips in one resampling."""
        # Output pixel u (normalised centre c_u in (-1, 1)) reads source column
        # left + (u + 0.5) * w / S - 0.5, i.e. normalised x = (w / W) * c_u + (2 * left + w) / W - 1.
        sx = p.width / width
        sx = torch.where(p.flip, -sx, sx)
        theta = torch.zeros(p.top.shape[0], 2, 3, device=p.top.device)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = (2 * p.left + p.width) / width - 1
        theta[:, 1, 1] = p.height / height
        theta[:, 1, 2] = (2 * p.top + p.height) / height - 1
        return F.affine_grid(theta, [theta.shape[0], 3, self.out_size, self.out_size], align_corners=False)

    def colour(self, x: torch.Tensor, p: ViewParams, indexed: bool | None = None) -> torch.Tensor:
        """Colour jitter (random order per view) then random grayscale, on [n, 3, S, S] in [0, 1].

        Each view runs one jitter operation per step. `indexed` (the default on CPU) applies each
        operation only to the views that run it now; the masked form (the default on GPU, where
        finding those views would wait for the device) runs all four on every view, the other
        three with identity factors. Both give the same result. The indexed form writes into `x`.
        """
        indexed = (not x.is_cuda) if indexed is None else indexed
        for step in range(4):
            op = torch.where(p.jitter, p.order[:, step], torch.full_like(p.order[:, step], -1))
            for which, fn in enumerate(OPERATIONS):
                runs = op == which
                if indexed:
                    idx = runs.nonzero().squeeze(1)
                    if idx.numel():
                        x[idx] = fn(x[idx], p.factors[idx, which])
                elif which == HUE:  # identity hue is not exact in floating point: select instead
                    x = torch.where(runs.view(-1, 1, 1, 1), fn(x, p.factors[:, which]), x)
                else:
                    x = fn(x, torch.where(runs, p.factors[:, which], torch.full_like(p.factors[:, which], IDENTITY[which])))
        return torch.where(p.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, K: int, source: torch.Generator | ImageDraws,
                 sizes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [M, H, W, 3] -> float [K * M, 3, S, S], view-major (view k is rows k*M..k*M+M-1),
        in channels-last memory. `source`: the images' keyed draws (training: each view a function
        of seed, epoch, image and view), or a generator. `sizes` [M, 2]: each image's own (height,
        width) where the batch holds them stretched to H x W; the crops follow the image's own size.

        On a CPU the views are made by one fused kernel (`augment_cpu`), elsewhere by batched tensor
        operations; both apply the same sampled parameters with the same formulas.
        """
        M, H, W, _ = images.shape
        u = draw_uniforms(source, K, M, UNIFORMS, images.device)
        if sizes is None:
            p = self.params(u, H, W)
        else:
            heights, widths = sizes[:, 0].repeat(K), sizes[:, 1].repeat(K)  # view-major, as u
            p = self.onto_base(self.params(u, heights, widths), heights, widths, H, W)
        if images.device.type == "cpu" and self.fused_cpu:
            return self.apply_fused(images, p)
        return self.apply(images, p, K)

    def apply(self, images: torch.Tensor, p: ViewParams, K: int) -> torch.Tensor:
        """The views of parameters `p` with batched tensor operations (any device)."""
        M, H, W, _ = images.shape
        S = self.out_size
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        # Stack each image's K sampling grids along the height axis: one grid_sample call reads
        # every image once and writes all its K views, without copying the image K times.
        grid = self.crop_grid(p, H, W).view(K, M, S, S, 2).transpose(0, 1).reshape(M, K * S, S, 2)
        views = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        views = views.view(M, 3, K, S, S).permute(2, 0, 1, 3, 4).reshape(K * M, 3, S, S)
        return self.normalize(self.colour(views, p)).contiguous(memory_format=torch.channels_last)

    def apply_fused(self, images: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """The views of parameters `p` with the fused CPU kernel."""
        from rrdist.data.augment_cpu import make_views

        S = self.out_size
        out = torch.empty(p.top.shape[0], S, S, 3)
        planar = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # once per image, not per view
        make_views(planar.numpy(), p.top.numpy(), p.left.numpy(), p.height.numpy(), p.width.numpy(),
                   p.flip.numpy(), p.jitter.numpy(), p.factors.numpy(), p.order.numpy(), p.gray.numpy(),
                   np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32), out.view(-1, S * S, 3).numpy())
        return out.permute(0, 3, 1, 2)  # [n, 3, S, S] in channels-last memory

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """No augmentation (evaluation): uint8 [B, H, W, 3] -> normalised float [B, 3, H, W]."""
        return self.inputs(images.permute(0, 3, 1, 2).float().div_(255.0))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Floats in [0, 1] [B, 3, H, W] -> the network's inputs: resized to out_size (bilinear,
        antialiased) if they are not, normalised."""
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.normalize(x)


def view_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
