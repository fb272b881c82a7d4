"""The same seed gives the same views and the same loss trace on one worker."""

import torch

from rrdist.config import PretrainConfig
from rrdist.data.augment import KViewAugment, view_generator
from rrdist.data.beton import load_manifest, split_path
from rrdist.data.loader import image_loader
from rrdist.methods import build_method
from rrdist.train.loop import STEPS, epoch_seed, train_epoch


def loss_trace(root, seed, steps_seen):
    manifest = load_manifest("digits", root)
    cfg = PretrainConfig(dataset="digits", K=3, batch_size=32, seed=seed)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg)
    optimizer = method.configure_optimizer()
    loader = image_loader(split_path(manifest, "train"), cfg.batch_size, train=True, seed=cfg.seed)
    torch.set_num_threads(1)
    augment = KViewAugment(32, tuple(manifest["mean"]), tuple(manifest["std"]))
    generator = view_generator(0, torch.device("cpu"))
    method.generator = generator
    trace = []
    for epoch in range(2):
        generator.manual_seed(epoch_seed(cfg.seed, 0, epoch))
        sums = train_epoch(method, loader, augment, optimizer, cfg.K, generator, torch.device("cpu"), trace=trace)
        steps_seen.append(int(sums[STEPS]))
    return trace


def test_same_seed_same_loss_trace(digits_root):
    steps = []
    a = loss_trace(digits_root, 0, steps)
    b = loss_trace(digits_root, 0, steps)
    c = loss_trace(digits_root, 1, steps)
    assert len(a) == 2 * (1437 // 32) and steps[:2] == [1437 // 32] * 2
    assert a == b  # bit-identical
    assert a != c
