"""The same seed gives the same views and the same loss trace on one worker."""

import io
import math

import torch

from rrdist.methods import make_config
from rrdist.data.augment import KViewAugment
from rrdist.data.beton import load_manifest, split_path
from rrdist.data.loader import image_loader
from rrdist.data.worker_data import WorkerData
from rrdist.methods import build_method
from rrdist.monitors import MonitorContext
from rrdist.train.batches import ViewBatches
from rrdist.train.step import EpochSums, TrainStep, train_epoch


def worker_data(root):
    return WorkerData.from_manifest(load_manifest("digits", root), "digits", root)


def loss_trace(root, seed, steps_seen, monitor_factory=None, epochs=2):
    """Each step's loss over `epochs` epochs; `monitor_factory(method)` adds a monitor, as the worker loop does."""
    manifest = load_manifest("digits", root)
    cfg = make_config(dataset="digits", K=3, batch_size=32, seed=seed)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, 10)
    optimizer = method.configure_optimizer()
    loader = image_loader(split_path(manifest, "train"), cfg.batch_size, train=True, seed=cfg.seed, indices=True)
    torch.set_num_threads(1)
    augment = KViewAugment(32, tuple(manifest["mean"]), tuple(manifest["std"]))
    method.generator = torch.Generator()
    monitors = [monitor_factory(method)] if monitor_factory else []
    batches = ViewBatches(loader, augment, cfg.settings.K, cfg.seed, torch.device("cpu"), method.generator)
    step = TrainStep(method, optimizer)
    hook = LossRecorder()
    for epoch in range(epochs):
        sums = train_epoch(step, batches.epoch(epoch), EpochSums(method.metric_names, torch.device("cpu")), hook,
                           monitors=monitors)
        steps_seen.append(int(sums.totals()["steps"]))
        for monitor in monitors:
            monitor.epoch_end(epoch + 1)
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
    from rrdist.monitors.probe import OnlineProbe, ProbeSettings

    probes, figures = [], []

    class Recorded(OnlineProbe):
        def epoch_end(self, epoch):
            correct, counted = self.sums.tolist()
            figures.append((correct, counted, super().epoch_end(epoch), self.sums.sum().item()))
            return figures[-1][2]

    def make_probe(method):
        context = MonitorContext(method.backbone, worker_data(digits_root), torch.device("cpu"), 0, 1)
        probes.append(Recorded(ProbeSettings(online_probe=True), context))
        probes.append(probes[0].classifier.weight.detach().clone())
        return probes[0]

    plain = loss_trace(digits_root, 0, [], epochs=1)
    probed = loss_trace(digits_root, 0, [], monitor_factory=make_probe, epochs=1)
    assert plain == probed
    probe, start = probes
    (correct, counted, shown, left), = figures
    assert counted == 3 * 32 * (1437 // 32)  # every view of every step, labels tiled over the views
    assert 0 < correct <= counted and shown == {"probe_acc": correct / counted}
    assert not torch.allclose(probe.classifier.weight, start)  # it trained
    assert left == 0  # reset for the next epoch


def test_online_probe_state_round_trips(digits_root):
    """What a checkpoint keeps of the probe gives a probe that continues as the original would."""
    from rrdist.methods import make_config
    from rrdist.monitors.probe import OnlineProbe, ProbeSettings

    method = build_method(make_config(dataset="digits"), 10)
    context = MonitorContext(method.backbone, worker_data(digits_root), torch.device("cpu"), 0, 1)
    torch.manual_seed(0)
    first, second = OnlineProbe(ProbeSettings(True), context), OnlineProbe(ProbeSettings(True), context)
    views, labels = torch.randn(2 * 8, 3, 32, 32), torch.randint(0, 10, (8,))
    method.backbone(views)
    first.step(labels)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as a checkpoint keeps it
    saved.seek(0)
    second.load_state_dict(torch.load(saved, weights_only=True))
    for probe in (first, second):
        method.backbone(views)
        probe.step(labels)
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert torch.equal(first.sums, second.sums) and first.sums[1] == 2 * 2 * 8


def test_knn_monitor_watches_without_changing_the_training(digits_root):
    """The kNN monitor between epochs leaves the loss trace bit-identical, and scores well above chance."""
    from rrdist.monitors.knn import KnnMonitor, KnnSettings

    scores = []

    class Recorded(KnnMonitor):
        def epoch_end(self, epoch):
            scores.append(super().epoch_end(epoch))
            return scores[-1]

    def watch(method):
        context = MonitorContext(method.backbone, worker_data(digits_root), torch.device("cpu"), 0, 2)
        return Recorded(KnnSettings(knn_every=1), context)

    plain = loss_trace(digits_root, 0, [], epochs=2)
    watched = loss_trace(digits_root, 0, [], epochs=2, monitor_factory=watch)
    assert plain == watched
    assert len(scores) == 2 and all(0.3 < s["knn_acc"] <= 1.0 for s in scores)  # 10 classes: chance is 0.1


def test_knn_monitor_scores_on_its_interval_and_at_the_last_epoch(digits_root):
    from rrdist.methods import make_config
    from rrdist.monitors.knn import KnnMonitor, KnnSettings

    method = build_method(make_config(dataset="digits"), 10)
    context = MonitorContext(method.backbone, worker_data(digits_root), torch.device("cpu"), 0, 5)
    monitor = KnnMonitor(KnnSettings(knn_every=2, knn_bank=100, knn_queries=50), context)
    assert monitor.loaders is None  # a start's first step does not wait for the monitor's loaders
    assert monitor.epoch_end(1) == {} and monitor.loaders is None
    due = [epoch for epoch in range(2, 6) if monitor.epoch_end(epoch)]
    assert due == [2, 4, 5]
    built = monitor.loaders
    assert len(built) == 2 and monitor.built_loaders() is built  # built at the first scoring, once


def test_weighted_knn_matches_the_written_out_vote():
    from rrdist.monitors.knn import weighted_knn

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
