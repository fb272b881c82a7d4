"""The same seed gives the same views and the same loss trace on one worker."""

import math

import torch

from rrdist.methods import make_config
from rrdist.data.augment import KViewAugment
from rrdist.data.beton import load_manifest, split_path
from rrdist.data.loader import image_loader
from rrdist.methods import build_method
from rrdist.train.batches import ViewBatches
from rrdist.train.step import EpochSums, TrainStep, train_epoch


def loss_trace(root, seed, steps_seen, probe_factory=None, epochs=2, epoch_end=None):
    manifest = load_manifest("digits", root)
    cfg = make_config(dataset="digits", K=3, batch_size=32, seed=seed)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg)
    optimizer = method.configure_optimizer()
    loader = image_loader(split_path(manifest, "train"), cfg.batch_size, train=True, seed=cfg.seed, indices=True)
    torch.set_num_threads(1)
    augment = KViewAugment(32, tuple(manifest["mean"]), tuple(manifest["std"]))
    method.generator = torch.Generator()
    probe = probe_factory(method.backbone) if probe_factory else None
    batches = ViewBatches(loader, augment, cfg.settings.K, cfg.seed, torch.device("cpu"), method.generator)
    step = TrainStep(method, optimizer, probe=probe)
    hook = LossRecorder()
    after_epoch = epoch_end(method) if epoch_end else None
    for epoch in range(epochs):
        sums = train_epoch(step, batches.epoch(epoch), EpochSums(method.metric_names, torch.device("cpu")), hook)
        steps_seen.append(int(sums.totals()["steps"]))
        if after_epoch:
            after_epoch()
    return hook.losses


class LossRecorder:
    """A step hook (the protocol of rrdist.train.hooks.StepHook) that keeps each step's loss."""

    def __init__(self):
        self.losses = []

    def before_step(self, step, batch):
        return batch

    def after_step(self, step, batch, metrics):
        self.losses.append(float(metrics["loss"]))


def test_same_seed_same_loss_trace(digits_root):
    steps = []
    a = loss_trace(digits_root, 0, steps)
    b = loss_trace(digits_root, 0, steps)
    c = loss_trace(digits_root, 1, steps)
    assert len(a) == 2 * (1437 // 32) and steps[:2] == [1437 // 32] * 2
    assert a == b  # bit-identical
    assert a != c


def test_online_probe_learns_without_changing_the_training(digits_root):
    """The probe trains on detached features: the loss trace is the same with and without it."""
    from rrdist.train.probe import OnlineProbe

    probes = []

    def make_probe(backbone):
        probes.append(OnlineProbe(backbone, 64, 10, torch.device("cpu")))
        probes.append(probes[0].classifier.weight.detach().clone())
        return probes[0]

    plain = loss_trace(digits_root, 0, [], epochs=1)
    probed = loss_trace(digits_root, 0, [], probe_factory=make_probe, epochs=1)
    assert plain == probed
    probe, start = probes
    correct, counted = probe.take_accuracy().tolist()
    assert counted == 3 * 32 * (1437 // 32)  # every view of every step, labels tiled over the views
    assert 0 < correct <= counted
    assert not torch.allclose(probe.classifier.weight, start)  # it trained
    assert probe.take_accuracy().sum() == 0  # reset for the next epoch


def test_knn_monitor_watches_without_changing_the_training(digits_root):
    """The kNN monitor between epochs leaves the loss trace bit-identical, and scores well above chance."""
    from rrdist.train.knn import KnnMonitor

    manifest = load_manifest("digits", digits_root)
    data = {"labelled": str(split_path(manifest, "train")), "test": str(split_path(manifest, "test")),
            "image_size": manifest["image_size"], "mean": manifest["mean"], "std": manifest["std"],
            "num_classes": manifest["num_classes"]}
    scores = []

    def watch(method):
        monitor = KnnMonitor(data, torch.device("cpu"))
        return lambda: scores.append(monitor.accuracy(method.backbone))

    plain = loss_trace(digits_root, 0, [], epochs=2)
    watched = loss_trace(digits_root, 0, [], epochs=2, epoch_end=watch)
    assert plain == watched
    assert len(scores) == 2 and all(0.3 < s <= 1.0 for s in scores)  # 10 classes: chance is 0.1


def test_weighted_knn_matches_the_written_out_vote():
    from rrdist.train.knn import weighted_knn

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=g)
    got = weighted_knn(bank, labels, queries, classes=3, k=6, temperature=0.5)
    for q in range(7):
        sims = [float(queries[q] @ bank[b] / (queries[q].norm() * bank[b].norm())) for b in range(40)]
        nearest = sorted(range(40), key=lambda b: -sims[b])[:6]
        votes = [0.0, 0.0, 0.0]
        for b in nearest:
            votes[int(labels[b])] += math.exp(sims[b] / 0.5)
        assert int(got[q]) == max(range(3), key=lambda c: votes[c])
