"""Baselines of Table 1: losses against written-out references, a few training steps each,
the crop-and-flip augmentation against torchvision, and the supervised lr schedule."""

import math
import subprocess
import sys

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from rrdist.methods import make_config
from rrdist.data.augment import view_generator
from rrdist.data.crop_flip import CropFlip
from rrdist.methods import build_method
from rrdist.methods.rotation import rotations
from rrdist.schedules import step_lr

CPU = torch.device("cpu")


def test_crop_flip_matches_torchvision_pad_crop_flip():
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    aug = CropFlip(32, mean, std)
    imgs = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    p = aug.sample(18, view_generator(0, CPU), CPU)
    out = aug.apply(imgs, p)
    assert out.shape == (18, 3, 32, 32)
    assert p.flip.any() and (~p.flip).any() and int(p.top.max()) <= 8 and int(p.left.min()) >= 0
    for v in range(18):
        x = TF.pad(imgs[v % 6].permute(2, 0, 1).float() / 255, [4])
        x = TF.crop(x, int(p.top[v]), int(p.left[v]), 32, 32)
        if p.flip[v]:
            x = TF.horizontal_flip(x)
        assert torch.allclose(out[v], TF.normalize(x, list(mean), list(std)), atol=1e-6), v


def test_rotations_turn_each_block_by_a_quarter():
    x = torch.randn(3, 2, 5, 5)
    turned, labels = rotations(x)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for n in range(3):
        img = x[n]
        want = [img, img.transpose(1, 2).flip(1), img.flip(1).flip(2), img.transpose(1, 2).flip(2)]
        for r in range(4):  # counter-clockwise quarter turns, written out with transposes and flips
            assert torch.equal(turned[r * 3 + n], want[r]), (n, r)


def reference_cross_entropy(logits, targets):
    total = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(targets)


@pytest.mark.parametrize("name", ["rotation", "supervised", "deepcluster"])
def test_loss_is_cross_entropy_written_out(name):
    torch.manual_seed(0)
    method = build_method(make_config(method=name, batch_size=4), 10).double().eval()
    views = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([3, 1, 0, 9]) * (9 if name == "deepcluster" else 1)  # deepcluster: 100 pseudo-classes
    loss, _ = method(views, labels)
    if name == "rotation":
        turned, targets = rotations(views)
        logits = method.head(method.backbone(turned))
    elif name == "deepcluster":
        logits, targets = method.head(method.backbone(views)), labels
    else:
        logits, targets = method.classifier(method.backbone(views)), labels
    assert abs(float(loss) - reference_cross_entropy(logits, targets)) < 1e-9


@pytest.mark.parametrize("name,extra", [("rotation", {}), ("supervised", {}), ("simclr", {}), ("deepcluster", {}),
                                        ("infomax", {}), ("relational", {"K": 4}),
                                        ("relational", {"K": 4, "label_fraction": 1.0, "head": "encoder_dot"}),
                                        ("relational", {"K": 4, "aggregation": "max"})])
def test_training_steps_change_the_backbone_and_lower_the_loss(name, extra):
    torch.manual_seed(0)
    method = build_method(make_config(method=name, batch_size=8, epochs=4, **extra), 10)
    optimizer = method.configure_optimizer()
    if name == "deepcluster":
        method.on_epoch_start(0, optimizer, FixedImages(torch.randn(300, 64, generator=torch.Generator().manual_seed(2))))
    else:
        method.on_epoch_start(0, optimizer)
    views = torch.randn(8 * method.views_per_image, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = method.targets(torch.arange(8) % 10, torch.arange(8))
    before = [p.detach().clone() for p in method.backbone.parameters()]
    losses = []
    for _ in range(10):
        loss, _ = method(views, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters()))


def test_random_weights_are_not_trained():
    method = build_method(make_config(method="random"), 10)
    assert not method.trainable
    with pytest.raises(RuntimeError):
        method(torch.randn(2, 3, 32, 32), None)


def test_supervised_lr_divided_by_ten_at_half_and_three_quarters():
    lrs = [step_lr(0.1, e, 8) for e in range(8)]
    assert lrs[:4] == [0.1] * 4
    assert all(abs(v - 0.01) < 1e-12 for v in lrs[4:6])
    assert all(abs(v - 0.001) < 1e-12 for v in lrs[6:])
    torch.manual_seed(0)
    method = build_method(make_config(method="supervised", epochs=8), 10)
    optimizer = method.configure_optimizer()
    method.on_epoch_start(6, optimizer)
    assert abs(optimizer.param_groups[0]["lr"] - 0.001) < 1e-12
    assert optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.usefixtures("ray_session")
def test_every_method_runs_through_a_sweep(tmp_path, digits_root):
    """One sweep over the methods: each trial pretrains through the same entry point and is
    evaluated; the random-weights trial saves its initial backbone without training."""
    import json

    import yaml

    from rrdist.tune.driver import run_sweep

    space = tmp_path / "methods.yaml"
    space.write_text(yaml.safe_dump({
        "name": "methods", "fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 1, "batch_size": 32, "K": 3},
        "axes": {"method": {"grid": ["relational", "simclr", "rotation", "supervised", "deepcluster", "infomax",
                                      "random"]}},
        "trial": {"workers": 1, "cpus_per_worker": 1}, "concurrency": 2, "evaluations": {"linear": {"epochs": 5}}}))
    sweep_dir = run_sweep(space, root=str(digits_root), out=tmp_path / "sweeps", log=lambda *a: None)
    trials = {t["config"]["method"]: t for t in
              (json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*/trial.json"))}
    assert sorted(trials) == ["deepcluster", "infomax", "random", "relational", "rotation", "simclr", "supervised"]
    for method, t in trials.items():
        assert t["status"] == "completed", (method, t.get("error"))
        assert 0.0 < t["metrics"]["linear_acc"] <= 1.0
    random_run = sweep_dir / "trials" / trials["random"]["trial"]
    assert torch.load(random_run / "backbone.pt", weights_only=True)["epoch"] == 0
    for method in ("simclr", "rotation", "supervised", "deepcluster", "infomax"):
        metrics = (sweep_dir / "trials" / trials[method]["trial"] / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["epoch"] == 1


@pytest.mark.usefixtures("ray_session")
def test_rrdist_pretrain_method_flag(tmp_path, digits_root):
    import ray

    out = tmp_path / "rotation-run"
    cmd = [sys.executable, "-m", "rrdist", "pretrain", "--method", "rotation", "--dataset", "digits", "--root",
           str(digits_root), "--epochs", "1", "--batch-size", "32", "--out", str(out),
           "--address", ray.get_runtime_context().gcs_address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done: 1 epochs" in done.stdout
    assert (out / "backbone.pt").is_file()


def test_deepcluster_clustering_recovers_separated_groups():
    from sklearn.metrics import normalized_mutual_info_score

    from rrdist.methods.deepcluster import cluster

    rng = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=rng) * 10
    truth = torch.arange(200) % 5
    features = (centres[truth] + torch.randn(200, 16, generator=rng)).double().numpy()
    labels = cluster(features, 5, seed=0)
    assert normalized_mutual_info_score(truth.numpy(), labels) > 0.99


class FixedImages:
    """Stands in for the loop's TrainingImages: the same features every epoch, in file order."""

    def __init__(self, features):
        self.feats, self.count = features, len(features)

    def features(self, backbone):
        return self.feats


def test_deepcluster_epoch_start_assigns_pseudo_labels_and_resets_its_head():
    torch.manual_seed(0)
    method = build_method(make_config(method="deepcluster", batch_size=8), num_classes=2)
    assert method.needs_indices and method.clusters == 20
    optimizer = method.configure_optimizer()
    feats = torch.randn(100, 64, generator=torch.Generator().manual_seed(1))
    method.on_epoch_start(0, optimizer, FixedImages(feats))
    first = method.pseudo_labels.clone()
    assert first.shape == (100,) and int(first.max()) < 20 and len(first.unique()) > 10
    assert method.epoch_metrics() == {}  # nothing to compare the first clustering with
    # One step, then a new epoch: the head starts again, Adam forgets its moments, NMI is logged.
    views = torch.randn(8, 3, 32, 32)
    idx = torch.arange(8) * 3
    loss, _ = method(views, method.targets(torch.zeros(8, dtype=torch.long), idx))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    trained_head = method.head[0].weight.detach().clone()
    method.on_epoch_start(1, optimizer, FixedImages(feats))
    assert not torch.equal(method.head[0].weight, trained_head)
    assert all(p not in optimizer.state for p in method.head.parameters())
    assert 0.0 <= method.epoch_metrics()["nmi"] <= 1.0
    assert torch.equal(method.targets(None, idx), method.pseudo_labels[idx])


def test_local_infomax_loss_matches_the_written_out_estimator():
    from rrdist.losses import local_jsd

    g = torch.Generator().manual_seed(0)
    glob = torch.randn(3, 4, generator=g, dtype=torch.float64)
    local = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    pos, neg = [], []
    for n in range(3):
        for m in range(3):
            for p in range(5):
                s = float(glob[n] @ local[m, :, p])
                (pos if n == m else neg).append(softplus(-s) if n == m else softplus(s))
    want = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert abs(float(local_jsd(glob, local)) - want) < 1e-10


@pytest.mark.parametrize("backbone", ["conv4", "resnet8"])
def test_infomax_reads_an_8x8_local_map_and_its_gradient_reverses_for_the_prior(backbone):
    torch.manual_seed(0)
    method = build_method(make_config(method="infomax", backbone=backbone, batch_size=4), 10)
    method(torch.randn(4, 3, 32, 32), None)
    assert method._local.shape[-2:] == (8, 8)
    # The encoder's gradient through the prior term is the opposite of the discriminator's view of it.
    from rrdist.methods.infomax import _Reverse

    x = torch.randn(5, requires_grad=True)
    (_Reverse.apply(x) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((5,), -2.0))


def test_label_fraction_is_checked():
    from rrdist.errors import ConfigError

    with pytest.raises(ConfigError, match="--label-fraction"):
        make_config(dataset="digits", label_fraction=1.5).validate()
    with pytest.raises(ConfigError, match="setting of relational, not of simclr.*--method relational"):
        make_config(dataset="digits", method="simclr", label_fraction=0.1).validate()
    with pytest.raises(ConfigError, match="unknown head"):
        make_config(dataset="digits", head="cosine").validate()


def test_deepcluster_refuses_too_few_images_before_anything_starts(tmp_path):
    from PIL import Image

    from rrdist.errors import DataError
    from rrdist.train.trainer import pretrain

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    cfg = make_config(method="deepcluster", dataset="imagefolder", root=str(tmp_path / "data"), epochs=1,
                         batch_size=2, out=str(tmp_path / "run"))
    with pytest.raises(DataError, match="20 clusters .* has 6 images: use a larger dataset"):
        pretrain(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
