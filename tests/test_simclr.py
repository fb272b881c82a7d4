"""SimCLR: NT-Xent against a written-out reference and the global-batch gradient with 2 Ray Train
workers equal to one process on the concatenated batch (training steps: test_baselines.py)."""

import math
import sys

import pytest
import ray.cloudpickle
import torch
import torch.nn.functional as F

from rrdist.methods import make_config
from rrdist.methods import build_method
from rrdist.losses import nt_xent

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def reference_nt_xent(z, temperature):
    """SimCLR's loss as its paper writes it: rows k and k + N are the two views of image k."""
    n = z.shape[0]
    half = n // 2
    total = 0.0
    for i in range(n):
        j = (i + half) % n
        sims = [float(z[i] @ z[k]) / temperature for k in range(n)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[j]) / denominator)
    return total / n


def test_nt_xent_matches_the_written_out_loss():
    z = F.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    loss, acc = nt_xent(z, z, 0, 0.5)
    assert abs(float(loss) - reference_nt_xent(z, 0.5)) < 1e-10
    # Identical views make every positive the best candidate.
    same = torch.cat([z[:6], z[:6]])
    assert float(nt_xent(same, same, 0, 0.5)[1]) == 1.0


def test_nt_xent_on_a_slice_of_the_global_batch():
    """A worker's anchors against the gathered batch give that worker's share of the global loss."""
    z = F.normalize(torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=2)
    z_all = z.reshape(20, 8)  # worker 0's [2M] block, then worker 1's
    parts = [nt_xent(z[r], z_all, 10 * r, 0.5)[0] for r in range(2)]
    # The same 20 anchors laid out view-major over all 10 images: [view 0 of images 0-9, view 1 of them].
    view_major = torch.cat([z[0, :5], z[1, :5], z[0, 5:], z[1, 5:]])
    whole = nt_xent(view_major, view_major, 0, 0.5)[0]
    assert torch.allclose((parts[0] + parts[1]) / 2, whole)


M = 6


def worker_views(rank):
    return torch.randn(2 * M, 3, 32, 32, generator=torch.Generator().manual_seed(10 + rank))


def fresh_simclr():
    torch.manual_seed(0)
    method = build_method(make_config(method="simclr", batch_size=M), 10)
    return method.eval()  # BatchNorm on running statistics: each view's projection is its own


def gradient_step(config):
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    method = fresh_simclr()
    model = ray.train.torch.prepare_model(method)
    loss, _ = model(worker_views(rank), None)
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad.detach().clone() for n, p in method.named_parameters()}, config["out"])
    ray.train.report({"loss": float(loss)})


@pytest.mark.usefixtures("ray_session")
def test_two_workers_give_the_single_process_gradient_of_the_concatenated_batch(tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path / "grads.pt"
    TorchTrainer(gradient_step, train_loop_config={"out": str(out)}, scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(storage_path=str(tmp_path), name="simclr")).fit()
    got = torch.load(out, weights_only=True)

    method = fresh_simclr()
    a, b = worker_views(0), worker_views(1)
    concatenated = torch.cat([a[:M], b[:M], a[M:], b[M:]])  # view 0 of all 2M images, then view 1
    loss, _ = method(concatenated, None)
    loss.backward()
    checked = 0
    for name, param in method.named_parameters():
        assert torch.allclose(got[name], param.grad, atol=1e-5), name
        checked += bool(param.grad.abs().sum() > 0)
    assert checked > 4  # gradients reached the backbone, not only the head


@pytest.mark.usefixtures("ray_session")
def test_rrdist_pretrain_method_simclr_runs_on_two_workers(digits_root, tmp_path):
    """The same pretraining entry point: 2 Ray Train workers, 2 views each, global NT-Xent."""
    import json

    from rrdist.train.trainer import pretrain

    cfg = make_config(method="simclr", dataset="digits", root=str(digits_root), batch_size=32, epochs=1,
                         workers=2, out=str(tmp_path / "simclr"))
    result = pretrain(cfg, log=lambda *a: None)
    metrics = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    # 1437 training images, 32 per optimizer step over both workers (16 each): 44 steps per epoch.
    assert metrics["steps"] == 1437 // 32
    assert metrics["views_per_s"] > 0 and math.isfinite(metrics["loss"])
    assert (result.run_dir / "backbone.pt").is_file()
