"""Random numbers keyed by what they are for, not by how many were drawn before.

An image's views must be the same whichever worker draws the image, in whatever batch, and after
a resume: each uniform number is a hash of (seed, epoch, image index, view index, draw number).
The hash is integer arithmetic on int64 tensors kept below 2**32 (no overflow), so it gives the
same bits on every device and in every batch layout. The mixing step is Wellons' "lowbias32", a
bijection of 32-bit integers with near-ideal avalanche.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B


def _mul32(x: torch.Tensor | int, c: int):
    """(x * c) mod 2**32 for 0 <= x, c < 2**32, with every product below 2**63."""
    lo = (x & 0xFFFF) * c
    hi = ((x >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & _MASK32


def mix(x: torch.Tensor | int):
    """lowbias32: a well-mixed bijection of 32-bit values (Python ints or int64 tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def key(*parts: int) -> int:
    """One 32-bit key from any integers (a 64-bit part counts as two 32-bit words)."""
    h = 0x9E3779B9
    for part in parts:
        part = int(part) % (1 << 64)
        h = mix(h ^ (part & _MASK32))
        h = mix(h ^ (part >> 32))
    return h


def uniform(base: int, items: torch.Tensor, columns: int) -> torch.Tensor:
    """Uniform float32 numbers in [0, 1) of shape [len(items), columns]: row i, column c is a hash of
    (base, items[i], c) and of nothing else. `items` are int64 in [0, 2**32)."""
    h = mix(items.to(torch.int64) ^ base)
    c = torch.arange(columns, dtype=torch.int64, device=items.device)
    h = mix(h[:, None] ^ mix(c + 0x632BE5AB)[None, :])
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: every value exact in float32


@dataclass(frozen=True)
class ImageDraws:
    """The random draws of a batch's images in one epoch: a pure function of (seed, epoch, image index)."""

    seed: int
    epoch: int
    indices: torch.Tensor  # [M] int64: each image's position in its split

    def view_uniforms(self, K: int, columns: int, stream: int = 0) -> torch.Tensor:
        """[K * M, columns] uniforms, view-major (row k*M + n is view k of image n)."""
        M = self.indices.shape[0]
        views = torch.arange(K, dtype=torch.int64, device=self.indices.device).repeat_interleave(M)
        items = mix(self.indices.to(torch.int64).repeat(K) ^ key(stream)) ^ views
        return uniform(key(self.seed, self.epoch, stream), items, columns)


def draw_uniforms(source: torch.Generator | ImageDraws, K: int, M: int, columns: int,
                  device: torch.device) -> torch.Tensor:
    """[K * M, columns] uniforms of a batch's views, view-major: keyed by image, or from a generator."""
    if isinstance(source, ImageDraws):
        return source.view_uniforms(K, columns).to(device)
    return torch.rand(K * M, columns, generator=source, device=device)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of the draws every worker shares in one step (negatives, priors): the same on every
    rank, so each computes the pairs one process would."""
    return key(seed, epoch, step, 0x5EED)
