"""One global batch on any number of workers: the same data order, views, pairs and gradients on
one, two and three workers (real FFCV loaders; real Ray Train with gloo on the CPU). Whole runs on
1, 2 and 3 workers give the same loss trace: tests/test_elastic.py."""

import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import torch

from rrdist.collective import GlobalBatchNorm, convert_global_batchnorm
from rrdist.methods import make_config
from rrdist.data.beton import load_manifest, split_path
from rrdist.data.keyed import ImageDraws, key, mix, step_seed, uniform
from rrdist.data.loader import global_batch_order, image_loader

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

M = 16  # the global batch of the one-step tests


# --------------------------------------------------------------------------- data order and views
@pytest.mark.parametrize("count,batch", [(100, 8), (1437, 32)])
def test_global_batches_are_split_over_the_ranks_in_order(count, batch):
    for epoch in range(2):
        single = global_batch_order(count, batch, seed=3, epoch=epoch)
        assert len(single) == (count // batch) * batch  # the last partial batch is dropped
        assert len(set(single.tolist())) == len(single) and single.max() < count
        for workers in (2, 3, 4, 5, 8):
            parts = [global_batch_order(count, batch, 3, epoch, rank, workers) for rank in range(workers)]
            sizes = [len(p) // (count // batch) for p in parts]
            assert max(sizes) - min(sizes) <= (batch % workers > 0) and sum(sizes) == batch  # differ by one at most
            assert sizes == sorted(sizes, reverse=True)  # the first ranks hold the extra images
            rows = np.concatenate([p.reshape(count // batch, -1) for p in parts], axis=1)
            assert np.array_equal(rows, single.reshape(-1, batch))  # the shares side by side are the batch
    assert not np.array_equal(global_batch_order(count, batch, 3, 0), global_batch_order(count, batch, 3, 1))
    assert not np.array_equal(global_batch_order(count, batch, 3, 0), global_batch_order(count, batch, 4, 0))
    assert np.array_equal(global_batch_order(count, batch, 3, 0), global_batch_order(count, batch, 3, 0))


def reference_lowbias32(x: int) -> int:
    """The hash as published, on Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_keyed_uniforms_are_a_pure_function_of_their_key():
    values = torch.randint(0, 2**32, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    assert mix(values).tolist() == [reference_lowbias32(v) for v in values.tolist()]
    assert len(set(mix(torch.arange(1 << 16)).tolist())) == 1 << 16  # a bijection: no two inputs collide

    a = ImageDraws(5, 2, torch.tensor([3, 7, 11])).view_uniforms(4, 33)
    b = ImageDraws(5, 2, torch.tensor([11, 3])).view_uniforms(4, 33)
    for k in range(4):  # view k of image 3, and of image 11, in two different batches
        assert torch.equal(a[k * 3 + 0], b[k * 2 + 1]) and torch.equal(a[k * 3 + 2], b[k * 2 + 0])
    assert not torch.equal(a, ImageDraws(5, 3, torch.tensor([3, 7, 11])).view_uniforms(4, 33))  # epoch
    assert not torch.equal(a, ImageDraws(6, 2, torch.tensor([3, 7, 11])).view_uniforms(4, 33))  # seed
    assert step_seed(0, 1, 2) != step_seed(0, 1, 3) and step_seed(0, 1, 2) == step_seed(0, 1, 2)

    u = uniform(key(1), torch.arange(200_000), 3)
    assert u.min() >= 0 and u.max() < 1
    for column in u.t():  # Kolmogorov-Smirnov distance to U(0, 1); 0.004 is far above chance at this n
        ks = (column.sort().values - torch.linspace(0, 1, len(column))).abs().max()
        assert ks < 0.004, float(ks)
    assert abs(float(torch.corrcoef(u.t())[0, 1])) < 0.01


def first_batches(loader, n):
    out = []
    for i, (images, labels, indices) in enumerate(loader):
        out.append((images.clone(), labels, indices))
        if i + 1 == n:
            return out


@pytest.mark.parametrize("recipe", ["kview", "kview-tensor", "crop_flip"])
def test_an_images_views_do_not_depend_on_the_worker_count(digits_root, recipe):
    """Real FFCV loaders in the global-batch order, views keyed by image: one worker's batch is the
    two workers' shares side by side, and each image's K views are bit-identical in either."""
    from rrdist.train.batches import build_augment

    manifest = load_manifest("digits", digits_root)
    augment = build_augment(recipe.split("-")[0], manifest["image_size"], manifest["mean"], manifest["std"])
    if recipe == "kview-tensor":
        augment.fused_cpu = False  # the batched tensor path (a GPU's), here on the CPU
    K, batch, seed = 3, 32, 4
    path = split_path(manifest, "train")
    views = {}
    for workers in (1, 2):
        for rank in range(workers):
            loader = image_loader(path, batch, train=True, seed=seed, rank=rank, workers=workers, indices=True)
            for epoch in range(2):
                for step, (images, _, indices) in enumerate(first_batches(loader, 3)):
                    assert len(indices) == batch // workers
                    v = augment(images, K, ImageDraws(seed, epoch, indices)).reshape(K, len(indices), -1)
                    for n, image in enumerate(indices.tolist()):
                        views.setdefault((workers, epoch, image), []).append((step, rank, v[:, n].clone()))
    one = {k[1:]: v for k, v in views.items() if k[0] == 1}
    two = {k[1:]: v for k, v in views.items() if k[0] == 2}
    assert one.keys() == two.keys() and len(one) == 2 * 3 * batch
    for image, [(step, _, a)] in one.items():
        [(step2, rank, b)] = two[image]
        assert step2 == step and torch.equal(a, b), image
    assert {r for v in two.values() for _, r, _ in v} == {0, 1}
    epochs = {e: {i: v[0][2] for (e2, i), v in one.items() if e2 == e} for e in (0, 1)}
    shared = set(epochs[0]) & set(epochs[1])
    assert all(not torch.equal(epochs[0][i], epochs[1][i]) for i in shared)  # new views every epoch


def test_global_batchnorm_shares_batchnorms_parameters_and_checkpoint_keys():
    from rrdist.models import build_backbone

    model = build_backbone("conv4")
    params = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    converted = convert_global_batchnorm(model)
    assert converted is model and any(isinstance(m, GlobalBatchNorm) for m in model.modules())
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in model.modules())
    assert {id(p) for p in model.parameters()} == params  # the optimizer's parameters stay valid
    assert set(model.state_dict()) == keys
    x = torch.randn(6, 3, 32, 32)
    plain = build_backbone("conv4")
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(model(x), plain(x))  # one process: plain BatchNorm, training statistics
    assert torch.allclose(model.eval()(x), plain.eval()(x))


# --------------------------------------------------------------------------- one step, every method
METHODS = {
    "relational": dict(K=3),
    "relational-max": dict(K=3, aggregation="max"),
    "relational-dot": dict(K=3, head="dot"),
    "relational-encoder_dot": dict(K=3, head="encoder_dot"),
    "relational-semi": dict(K=3, label_fraction=0.5),
    "simclr": dict(method="simclr"),
    "rotation": dict(method="rotation"),
    "supervised": dict(method="supervised"),
    "deepcluster": dict(method="deepcluster"),
    "infomax": dict(method="infomax"),
}


def one_step(name, root, rank, workers, model_wrapper=None):
    """One training step of a method on its share of the first global batch, as the worker loop
    makes it; returns this worker's loss share, the parameters' gradients and the online probe's
    weights after its step.

    In float64: the two sides compute the same sums in different groupings, and float32 rounding,
    amplified by BatchNorm's backward on the blocky digits images, reaches 1e-3 in the first
    layer's gradient; float64 shows whether the two computations are the same one."""
    from rrdist.data.loader import image_loader
    from rrdist.methods import build_method
    from rrdist.data.worker_data import WorkerData
    from rrdist.monitors import MonitorContext
    from rrdist.monitors.probe import OnlineProbe, ProbeSettings
    from rrdist.train.batches import build_augment

    from rrdist.collective import set_global_batch

    set_global_batch(M)  # as the worker loop does: the shares of a global batch N may not divide
    manifest = load_manifest("digits", root)
    cfg = make_config(dataset="digits", batch_size=M, seed=0, **METHODS[name])
    torch.manual_seed(0)
    method = build_method(cfg, manifest["num_classes"]).double().to(memory_format=torch.channels_last)
    if workers > 1:
        convert_global_batchnorm(method)
    if name == "deepcluster":  # fixed pseudo-labels by image (the clustering is rank 0's, broadcast)
        method.pseudo_labels = torch.arange(manifest["splits"]["train"]["n"]) * 7 % method.clusters
    context = MonitorContext(method.backbone, WorkerData.from_manifest(manifest, "digits", root), torch.device("cpu"),
                             0, 1)
    probe = OnlineProbe(ProbeSettings(online_probe=True), context)
    model = model_wrapper(method) if model_wrapper else method
    loader = image_loader(split_path(manifest, "train"), M, train=True, seed=0, rank=rank, workers=workers,
                          indices=True)
    images, labels, indices = first_batches(loader, 1)[0]
    method.generator = torch.Generator().manual_seed(step_seed(0, 0, 0))
    views = build_augment(method.augmentation, manifest["image_size"], manifest["mean"], manifest["std"])(images, method.views_per_image, ImageDraws(0, 0, indices))
    views = views.double()
    targets = method.targets(labels, indices) if method.needs_indices else labels
    loss, metrics = model(views, targets)
    loss.backward()
    probe.step(labels)
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    return {"loss": float(loss), "acc": float(metrics[method.metric_names[-1]]) if len(method.metric_names) > 1 else 0.0, "grads": grads,
            "probe": probe.classifier.weight.detach().clone(),
            "buffers": {n: b.detach().clone() for n, b in method.named_buffers()}}


def steps_on_workers(config):
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    workers = config["workers"]
    results = {name: one_step(name, config["root"], rank, workers, ray.train.torch.prepare_model) for name in METHODS}
    torch.save(results, Path(config["out"]) / f"rank{rank}.pt")
    ray.train.report({})


def fit(fn, config, workers=2):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Half a CPU each: three workers fit this 2-core machine's Ray.
    TorchTrainer(fn, train_loop_config=config, scaling_config=ScalingConfig(num_workers=workers,
                                                                            resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(config["out"]), name="fit")).fit()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("workers", [2, 3])
def test_one_step_on_n_workers_equals_one_process_for_every_method(digits_root, tmp_path, workers):
    """DDP over 2 workers (8 images each) and 3 workers (shares of 6, 5 and 5: M = 16 does not
    divide), with global BatchNorm: the averaged gradients are those of one process holding the
    whole batch, for every method; the workers' mean loss is the whole batch's loss, and the online
    probe trains as on one process."""
    fit(steps_on_workers, {"root": str(digits_root), "out": str(tmp_path), "workers": workers}, workers)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(workers)]
    torch.set_num_threads(1)
    for name in METHODS:
        want = one_step(name, digits_root, 0, 1)
        got = ranks[0][name]
        loss = sum(r[name]["loss"] for r in ranks) / workers
        assert abs(loss - want["loss"]) <= 1e-9 * abs(want["loss"]), name
        assert abs(sum(r[name]["acc"] for r in ranks) / workers - want["acc"]) < 1e-6, name  # float32 counts
        assert got["grads"].keys() == want["grads"].keys(), name
        largest = max(float(g.norm()) for g in want["grads"].values())
        moved = 0
        for param, g in want["grads"].items():
            # A conv bias followed by BatchNorm has a true gradient of zero: compared to the largest.
            difference = float((got["grads"][param] - g).norm())
            assert difference <= 1e-7 * float(g.norm()) + 1e-10 * largest, (name, param, difference)
            assert torch.equal(got["grads"][param], ranks[-1][name]["grads"][param])  # DDP: one gradient
            moved += bool(g.abs().sum() > 0)
        assert moved >= len(want["grads"]) // 2, name  # the step reaches the network
        assert relative_difference(got["probe"], want["probe"]) < 1e-5, name
        for buffer, b in want["buffers"].items():  # BatchNorm's running statistics: the global batch's
            assert torch.allclose(got["buffers"][buffer], b, rtol=1e-9, atol=1e-12), (name, buffer)
        assert torch.equal(got["probe"], ranks[-1][name]["probe"]), name


def test_keyed_view_parameters_have_the_generators_distributions():
    """The views keyed by image are drawn from the same distributions as those of a generator:
    two-sample Kolmogorov-Smirnov distance of every parameter over 20,000 views, and the rates."""
    from rrdist.data.augment import KViewAugment

    aug = KViewAugment(32, (0.5,) * 3, (0.25,) * 3)
    n_images, K = 5000, 4
    keyed = aug.params(ImageDraws(0, 0, torch.arange(n_images)).view_uniforms(K, 33), 32, 32)
    drawn = aug.sample(n_images * K, 32, 32, torch.Generator().manual_seed(0), torch.device("cpu"))

    def ks(a: torch.Tensor, b: torch.Tensor) -> float:
        grid = torch.cat([a, b]).unique()
        cdf = lambda x: torch.searchsorted(x.sort().values.contiguous(), grid, right=True) / len(x)  # noqa: E731
        return float((cdf(a.double()) - cdf(b.double())).abs().max())

    for field in ("top", "left", "height", "width"):
        assert ks(getattr(keyed, field), getattr(drawn, field)) < 0.02, field
    for column in range(4):
        assert ks(keyed.factors[:, column], drawn.factors[:, column]) < 0.02, column
        assert abs(float((keyed.order[:, 0] == column).double().mean()) - 0.25) < 0.015
    for field, p in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2)):
        assert abs(float(getattr(keyed, field).double().mean()) - p) < 0.01, field
    # the K views of one image are independent draws: crop sizes of view 0 and view 1 uncorrelated
    area = (keyed.height * keyed.width).reshape(K, n_images)
    assert abs(float(torch.corrcoef(area[:2].double())[0, 1])) < 0.04


@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (7, 3)])
def test_global_batchnorm_function_is_batchnorm_on_one_process(shape):
    """The hand-written forward and backward (fused kernels, global sums) against torch's BatchNorm
    and autograd, in float64: outputs, input and parameter gradients, running statistics."""
    from rrdist.collective import _GlobalBatchNormFn

    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    mine = GlobalBatchNorm(shape[1]).double()
    with torch.no_grad():
        mine.weight.uniform_(0.5, 2.0)
        mine.bias.uniform_(-1.0, 1.0)
    reference = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[1]).double()
    reference.load_state_dict(mine.state_dict())
    weights = torch.randn(*shape, dtype=torch.float64)  # a loss that weighs every output differently
    y = _GlobalBatchNormFn.apply(x, mine.weight, mine.bias, mine)
    y_reference = reference(x)
    got = torch.autograd.grad((y * weights).sum(), [x, mine.weight, mine.bias])
    want = torch.autograd.grad((y_reference * weights).sum(), [x, reference.weight, reference.bias])
    assert torch.allclose(y, y_reference.detach(), atol=1e-12)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(mine.running_mean, reference.running_mean, atol=1e-12)
    assert torch.allclose(mine.running_var, reference.running_var, atol=1e-12)
