"""The K-view augmentation as one fused CPU kernel (numba), for CPU training.

On a GPU the batched tensor operations of `augment.py` are fast; on a CPU they are memory bound:
every colour operation is a pass over the whole M*K-view batch (25 MB of floats at M=64, K=32).
Here each view is made start to finish in a small buffer that stays in the core's L1 cache:
separable bilinear crop-resize-flip from the uint8 image, the jitter operations in the view's
order, grayscale, normalisation, one write. Views run in parallel over the cores.

It applies the same parameters (`ViewParams`) with the same formulas as the tensor path, so both
give the same views up to float rounding (tested). Constants are float32 so numba keeps the
arithmetic in single precision, as the tensor path does.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GR, _GG, _GB = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
_ZERO, _ONE, _HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)
_TWO, _FOUR, _SIX = np.float32(2.0), np.float32(4.0), np.float32(6.0)


# Reassociation and reciprocals let LLVM vectorise the per-pixel loops; results stay within float
# rounding of the tensor path (tested). NaN/inf semantics are kept.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(inline="always", fastmath=_FAST)
def _clamp01(v):
    return min(max(v, _ZERO), _ONE)


@numba.njit(inline="always", fastmath=_FAST)
def _taps(start, size, out_size, src_size, flip, lo, hi, w_hi):
    """Bilinear source taps of each output index (grid_sample, align_corners=False, border)."""
    scale = size / np.float32(out_size)
    for o in range(out_size):
        u = out_size - 1 - o if flip else o
        pos = start + (np.float32(u) + _HALF) * scale - _HALF
        pos = min(max(pos, _ZERO), np.float32(src_size - 1))
        i0 = int(math.floor(pos))
        lo[o] = i0
        hi[o] = min(i0 + 1, src_size - 1)
        w_hi[o] = pos - np.float32(i0)


@numba.njit(inline="always", fastmath=_FAST)
def _brightness(buf, factor, n):
    for c in range(3):
        for p in range(n):
            buf[c, p] = _clamp01(buf[c, p] * factor)


@numba.njit(inline="always", fastmath=_FAST)
def _contrast(buf, factor, n):
    total = _ZERO
    for p in range(n):
        total += _GR * buf[0, p] + _GG * buf[1, p] + _GB * buf[2, p]
    rest = (_ONE - factor) * (total / np.float32(n))
    for c in range(3):
        for p in range(n):
            buf[c, p] = _clamp01(factor * buf[c, p] + rest)


@numba.njit(inline="always", fastmath=_FAST)
def _saturation(buf, factor, n):
    rest = _ONE - factor
    for p in range(n):
        gray = rest * (_GR * buf[0, p] + _GG * buf[1, p] + _GB * buf[2, p])
        buf[0, p] = _clamp01(factor * buf[0, p] + gray)
        buf[1, p] = _clamp01(factor * buf[1, p] + gray)
        buf[2, p] = _clamp01(factor * buf[2, p] + gray)


@numba.njit(inline="always", fastmath=_FAST)
def _hue_channel(h6, offset, maxc, chroma):
    k = h6 + offset  # (offset + 6h) mod 6, with 6h in [0, 6)
    k = k - _SIX if k >= _SIX else k
    return maxc - chroma * min(max(min(k, _FOUR - k), _ZERO), _ONE)


@numba.njit(inline="always", fastmath=_FAST)
def _hue(buf, shift, n):
    """RGB -> HSV, rotate, -> RGB, written without branches so the loop vectorises.

    value = max, value * saturation = max - min (the chroma): both survive the rotation.
    Gray pixels (chroma 0) come back unchanged, as in the tensor formula.
    """
    for p in range(n):
        r, g, b = buf[0, p], buf[1, p], buf[2, p]
        maxc = max(r, max(g, b))
        chroma = maxc - min(r, min(g, b))
        inv = _ONE / (chroma if chroma > _ZERO else _ONE)
        rc, gc, bc = (maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv
        h = (bc - gc) if maxc == r else ((_TWO + rc - bc) if maxc == g else (_FOUR + gc - rc))
        h = h / _SIX + _ONE  # fmod(h / 6 + 1, 1): h / 6 + 1 lies in [5/6, 11/6]
        h = h - _ONE if h >= _ONE else h
        h = h + shift  # remainder(h + shift, 1), |shift| < 1
        h = h + _ONE if h < _ZERO else (h - _ONE if h >= _ONE else h)
        h6 = h * _SIX
        buf[0, p] = _hue_channel(h6, np.float32(5.0), maxc, chroma)
        buf[1, p] = _hue_channel(h6, np.float32(3.0), maxc, chroma)
        buf[2, p] = _hue_channel(h6, np.float32(1.0), maxc, chroma)


@numba.njit(inline="always", fastmath=_FAST)
def _crop_resize(img, y0, y1, wy, x0, x1, wx, rows, S, buf, c):
    """Bilinear resampling of one channel, separably: each source row the view touches is
    interpolated along x once (rows[r - first]), then output rows blend two of those."""
    first, last = y0[0], y1[S - 1]
    if first > last:  # the rows are read in the reverse order only if the crop is flipped in y (never)
        first, last = last, first
    for r in range(first, last + 1):
        for ox in range(S):
            a = img[r, x0[ox]]
            rows[r - first, ox] = a + wx[ox] * (img[r, x1[ox]] - a)
    for oy in range(S):
        upper = rows[y0[oy] - first]
        lower = rows[y1[oy] - first]
        fy = wy[oy]
        base = oy * S
        for ox in range(S):
            buf[c, base + ox] = upper[ox] + fy * (lower[ox] - upper[ox])


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def make_views(images, top, left, height, width, flip, jitter, factors, order, gray, mean, std, out):
    """images float32 [M, 3, H, W] in [0, 1]; per-view parameters (n = K * M rows, view-major);
    out float32 [n, S * S, 3] (channels last, the layout the convolutions run fastest on)."""
    M, _, H, W = images.shape
    n_views = out.shape[0]
    S = int(round(math.sqrt(out.shape[1])))
    n = S * S
    chunk = 64  # views per task: scratch buffers are allocated once per chunk, not per view
    for start in numba.prange((n_views + chunk - 1) // chunk):
        x0 = np.empty(S, np.int64)
        x1 = np.empty(S, np.int64)
        wx = np.empty(S, np.float32)
        y0 = np.empty(S, np.int64)
        y1 = np.empty(S, np.int64)
        wy = np.empty(S, np.float32)
        rows = np.empty((H, S), np.float32)
        buf = np.empty((3, n), np.float32)
        for v in range(start * chunk, min(start * chunk + chunk, n_views)):
            m = v % M
            _taps(np.float32(left[v]), np.float32(width[v]), S, W, flip[v], x0, x1, wx)
            _taps(np.float32(top[v]), np.float32(height[v]), S, H, False, y0, y1, wy)
            for c in range(3):
                _crop_resize(images[m, c], y0, y1, wy, x0, x1, wx, rows, S, buf, c)
            if jitter[v]:
                for step in range(4):
                    op = order[v, step]
                    f = np.float32(factors[v, op])
                    if op == 0:
                        _brightness(buf, f, n)
                    elif op == 1:
                        _contrast(buf, f, n)
                    elif op == 2:
                        _saturation(buf, f, n)
                    else:
                        _hue(buf, f, n)
            if gray[v]:
                for p in range(n):
                    g = _GR * buf[0, p] + _GG * buf[1, p] + _GB * buf[2, p]
                    buf[0, p] = g
                    buf[1, p] = g
                    buf[2, p] = g
            for c in range(3):
                mu, inv_sd = np.float32(mean[c]), _ONE / np.float32(std[c])
                for p in range(n):
                    out[v, p, c] = (buf[c, p] - mu) * inv_sd
