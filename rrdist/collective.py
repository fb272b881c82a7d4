"""Data parallelism that computes what one process would: which share of the global batch this
worker holds, gathers whose gradients flow back to the worker that owns the rows, and BatchNorm
over the global batch.

The global batch of M images is split over N workers in rank order, in shares that differ by one
image at most where N does not divide M (`shares`): worker r holds images start_r .. stop_r - 1.
A tensor "laid out like the global batch" holds, on each worker, the same number of rows per
image of its share (K views, 4 rotations, ...); the gathers use the layout set for the process
(`set_global_batch`) to know every worker's row count without asking (no extra collective), and
assume equal shares where none is set. Every helper here is the identity on a single process,
so a method written with them runs unchanged on one worker or many.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from rrdist.data.loader import shares  # the data layer splits each global batch; this follows it

_GLOBAL_BATCH: int | None = None  # M of this process's training steps; None: equal shares


def world() -> tuple[int, int]:
    """(this worker's rank, number of workers); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def set_global_batch(M: int | None) -> None:
    """The global batch of every training step in this process (the worker loop sets it; None clears)."""
    global _GLOBAL_BATCH
    _GLOBAL_BATCH = M


def own_images(M: int) -> tuple[int, int]:
    """[start, stop) of this worker's images within the global batch of M."""
    rank, n = world()
    sizes = shares(M, n)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def row_counts(rows: int) -> list[int]:
    """Every worker's rows, in rank order, of a tensor laid out like the global batch of which this
    worker holds `rows` rows."""
    rank, n = world()
    if _GLOBAL_BATCH is None or _GLOBAL_BATCH % n == 0:
        return [rows] * n
    sizes = shares(_GLOBAL_BATCH, n)
    per_image, rest = divmod(rows, sizes[rank])
    if rest:
        raise ValueError(f"{rows} rows are not laid out like a share of {sizes[rank]} images")
    return [per_image * s for s in sizes]


def share_factor(rows: int) -> float:
    """The factor that turns a mean over this worker's `rows` rows (laid out like the global batch)
    into its share of the global mean, times N: the workers' average of the scaled means (what DDP
    applies to the gradients, and the epoch figures) is then the global mean. 1 for equal shares."""
    counts = row_counts(rows)
    return rows * len(counts) / sum(counts)


class _Gather(torch.autograd.Function):
    """All workers' rows in rank order; backward: the sum over workers of the gradient of this
    worker's rows (an all-reduce, which gloo and NCCL both run, then this worker's block)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        rank, _ = world()
        start = sum(counts[:rank])
        ctx.rows = (start, start + counts[rank])
        return gather_detached(x, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]], None


def gather(x: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
    """Every worker's rows of x, in rank order (`counts`: each worker's row count; by default x is
    laid out like the global batch); differentiable: each worker receives the gradient of every
    loss term, on any worker, that used its rows."""
    if world()[1] == 1:
        return x
    return _Gather.apply(x, counts if counts is not None else row_counts(x.shape[0]))


def gather_detached(x: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
    """Every worker's rows of x, in rank order, without gradient (labels, indices, probe inputs);
    `counts` as for `gather`. Uneven shares travel padded to the largest, in one all-gather."""
    _, n = world()
    if n == 1:
        return x
    counts = counts if counts is not None else row_counts(x.shape[0])
    most = max(counts)
    x = x.contiguous()
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x)
    if min(counts) == most:
        return torch.cat(parts)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def gather_views(x: torch.Tensor, K: int) -> torch.Tensor:
    """View-major rows [K * m, ...] of this worker's images -> the view-major rows [K * M, ...] of the
    global batch, exactly as one process holding all M images would lay them out (row k*M + g is
    view k of global image g); differentiable like `gather`."""
    _, n = world()
    if n == 1:
        return x
    counts = row_counts(x.shape[0])
    blocks = gather(x, counts).split(counts)  # each worker's [K * m_r, ...]
    per_view = [b.reshape(K, b.shape[0] // K, *x.shape[1:]) for b in blocks]  # [view, image, ...]
    return torch.cat(per_view, dim=1).reshape(sum(counts), *x.shape[1:])


class _GlobalBatchNormFn(torch.autograd.Function):
    """Training-mode BatchNorm with the global batch's statistics, forward and backward.

    Forward: each worker's mean and squared deviations (two passes, local), one all-gather, the
    parallel-variance combination (Chan et al.), then torch's fused kernel normalises with the
    global statistics. Backward: torch's fused kernel gives g·w/σ and this worker's sums of g and
    g·x̂; one all-reduce makes them global, and dL/dx = w/σ (g - mean(g) - x̂ mean(g·x̂)) over the
    global batch. Workers may hold different numbers of rows (a relation head's pairs).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, module):
        dims = [0, *range(2, x.dim())]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least
        c = x.shape[1]
        local_var, local_mean = torch.var_mean(xf, dim=dims, correction=0)
        count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
        local = torch.cat([local_mean, local_var * count, count])[None]
        stats = gather_detached(local, [1] * world()[1])  # [workers, 2C + 1]: one row each
        counts = stats[:, -1:]
        total = counts.sum()
        mean = (stats[:, :c] * counts).sum(0) / total
        var = (stats[:, c:2 * c].sum(0) + (counts * (stats[:, :c] - mean).square()).sum(0)) / total
        if module.track_running_stats:
            module.num_batches_tracked.add_(1)
            momentum = module.momentum if module.momentum is not None else 1.0 / float(module.num_batches_tracked)
            module.running_mean.lerp_(mean.to(module.running_mean.dtype), momentum)
            module.running_var.lerp_((var * total / (total - 1.0).clamp(min=1.0)).to(module.running_var.dtype),
                                     momentum)
        w = weight.to(xf.dtype) if weight is not None else None
        b = bias.to(xf.dtype) if bias is not None else None
        y = torch.nn.functional.batch_norm(xf, mean, var, w, b, training=False, eps=module.eps)
        ctx.save_for_backward(xf, w, mean, var, total)
        ctx.eps, ctx.dtype = module.eps, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        xf, w, mean, var, total = ctx.saved_tensors
        g = grad.to(xf.dtype)
        c = xf.shape[1]
        shape = [1, -1] + [1] * (xf.dim() - 2)
        invstd = torch.rsqrt(var + ctx.eps)
        ones = torch.ones(c, dtype=xf.dtype, device=xf.device)
        # Eval-mode backward with the global statistics: g·w/σ, and this worker's Σ g·x̂ and Σ g.
        scaled, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
            g, xf, w if w is not None else ones, mean, var, None, None, False, ctx.eps, [True, True, True])
        sums = torch.cat([sum_g, sum_gx])
        _, n = world()
        if n > 1:
            dist.all_reduce(sums)
        mean_g, mean_gx = sums[:c] / total, sums[c:] / total
        scale = invstd * (w if w is not None else 1.0)
        grad_x = scaled - (scale * mean_g).view(shape) - (xf - mean.view(shape)) * (scale * invstd * mean_gx).view(shape)
        affine = w is not None
        return grad_x.to(ctx.dtype), sum_gx if affine else None, sum_g if affine else None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all workers.

    torch's SyncBatchNorm accepts CUDA tensors only; this one uses collectives that gloo (CPU) and
    NCCL (GPU) both run, one each way per layer (`_GlobalBatchNormFn`), so the backward pass also
    sees the global batch. Parameters, buffers and state-dict keys are BatchNorm's: a saved model
    loads into plain BatchNorm. Outside a process group, and in eval mode, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if world()[1] == 1 or not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        return _GlobalBatchNormFn.apply(x, self.weight, self.bias, self)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` becomes a GlobalBatchNorm sharing its parameters and buffers
    (the optimizer's parameters stay the same objects). Returns the module (replaced if it is one)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child))
    return module
