"""Data parallelism is the same science as one process: DDP updates and FFCV sharding, 2 CPU workers."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch

from rrdist.config import PretrainConfig
from rrdist.data.beton import _write_split
from rrdist.data.datasets import Split
from rrdist.methods import build_method

pytestmark = pytest.mark.usefixtures("ray_session")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

K, M = 3, 8
LR = 0.1
CFG = dict(dataset="digits", K=K, batch_size=M)


def fixed_views(rank):
    return torch.randn(K * M, 3, 32, 32, generator=torch.Generator().manual_seed(rank))


def fresh_method():
    torch.manual_seed(0)
    return build_method(PretrainConfig(**CFG))


def ddp_step(config):
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    method = fresh_method()
    method.generator = torch.Generator().manual_seed(100 + rank)  # this worker's negatives
    optimizer = torch.optim.SGD(method.parameters(), lr=LR)  # a step proportional to the gradient
    model = ray.train.torch.prepare_model(method)  # DistributedDataParallel
    loss, _ = model(fixed_views(rank), None)
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters()}
    optimizer.step()
    if rank == 0:
        torch.save({"params": {n: p.detach() for n, p in method.named_parameters()}, "grads": grads}, config["out"])
    ray.train.report({"loss": float(loss)})


def fit(fn, config, workers=2):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(fn, train_loop_config=config, scaling_config=ScalingConfig(num_workers=workers),
                 run_config=RunConfig(storage_path=str(Path(config["dir"])), name="fit")).fit()


def test_one_ddp_step_equals_averaged_single_process_gradients(tmp_path):
    out = tmp_path / "params.pt"
    fit(ddp_step, {"out": str(out), "dir": str(tmp_path)})
    saved = torch.load(out, weights_only=True)
    got, got_grads = saved["params"], saved["grads"]

    # Reference: each worker's loss computed on its own copy, gradients averaged, one Adam step.
    copies = [fresh_method() for _ in range(2)]
    for rank, method in enumerate(copies):
        method.generator = torch.Generator().manual_seed(100 + rank)
        loss, _ = method(fixed_views(rank), None)
        loss.backward()
    reference = copies[0]
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    for p0, p1 in zip(reference.parameters(), copies[1].parameters()):
        p0.grad = (p0.grad + p1.grad) / 2
    optimizer.step()
    initial = dict(fresh_method().named_parameters())
    changed = 0
    for name, param in reference.named_parameters():
        assert torch.allclose(got_grads[name], param.grad, rtol=1e-4, atol=1e-7), name
        assert torch.allclose(got[name], param.detach(), rtol=1e-5, atol=1e-7), name
        changed += not torch.equal(got[name], initial[name].detach())
    assert changed == len(got)  # the step moved every parameter


def shard_epochs(config):
    import ray.train

    from rrdist.data.loader import image_loader

    rank = ray.train.get_context().get_world_rank()
    seen = {}
    for n in config["sizes"]:
        loader = image_loader(Path(config["dir"]) / f"idx{n}.beton", M, train=True, seed=7, distributed=True)
        seen[n] = [[int(i) for _, labels in loader for i in labels] for _ in range(2)]
    (Path(config["dir"]) / f"rank{rank}.json").write_text(json.dumps(seen))
    ray.train.report({})


def test_every_image_once_per_epoch_across_workers(tmp_path):
    sizes = [2 * M * 5, 2 * M * 5 + 7]  # divisible by workers x M, and not
    for n in sizes:  # labels are image indices
        images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
        _write_split(tmp_path / f"idx{n}.beton", Split(images, np.arange(n), ["x"]), 1)
    fit(shard_epochs, {"dir": str(tmp_path), "sizes": sizes})
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    exact = str(sizes[0])
    for epoch in range(2):
        a, b = ranks[0][exact][epoch], ranks[1][exact][epoch]
        assert len(a) == len(b) == sizes[0] // 2
        assert sorted(a + b) == list(range(sizes[0]))  # every image exactly once across the workers
    assert ranks[0][exact][0] != ranks[0][exact][1]  # a new order each epoch

    # Otherwise: each rank takes ceil(N / W) indices (padded by repetition) and drops its last
    # partial batch, so an epoch covers floor(ceil(N / W) / M) * M * W images, no image more than
    # twice (the padding), and the skipped ones change with the epoch.
    odd = str(sizes[1])
    per_rank = (-(-sizes[1] // 2) // M) * M
    for epoch in range(2):
        a, b = ranks[0][odd][epoch], ranks[1][odd][epoch]
        assert len(a) == len(b) == per_rank
        counts = np.bincount(a + b, minlength=sizes[1])
        assert counts.max() <= 2 and (counts > 0).sum() >= 2 * per_rank - 1
    skipped = [set(range(sizes[1])) - set(ranks[0][odd][e] + ranks[1][odd][e]) for e in range(2)]
    assert skipped[0] != skipped[1]
