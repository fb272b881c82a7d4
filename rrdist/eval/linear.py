"""Linear evaluation (Kolesnikov et al., 2019, as in the paper): a linear classifier on frozen features.

100 epochs, Adam lr 1e-3, mini-batch 128, no augmentation; the score is test accuracy. The
backbone runs once per split (features cached), not once per epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rrdist import atomic
from rrdist.eval.results import at_least, evaluation_device, positive, result_stem
from rrdist.progress import Progress


RESIDENT = 2 << 30  # bytes of training features moved whole to the evaluation device


@dataclass
class LinearSettings:
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> "LinearSettings":
        at_least(vars(self), {"epochs": 1, "batch_size": 1})
        positive({"lr": self.lr})
        return self


def fit_linear(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: LinearSettings,
               device: torch.device) -> torch.nn.Linear:
    """Adam on softmax cross-entropy, mini-batches of a fresh permutation each epoch.

    The gradient of a linear layer under cross-entropy has a closed form, (softmax - onehot)^T x / B,
    so each step is a few tensor operations with no autograd graph: the classifier trains in a
    fraction of the time the same loop with autograd takes (`fit_linear_autograd`, the reference
    the tests hold it to).
    """
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    clf = torch.nn.Linear(train_x.shape[1], num_classes).to(device)
    weight, bias = clf.weight, clf.bias
    opt = torch.optim.Adam([weight, bias], lr=settings.lr, foreach=True)
    # Features larger than RESIDENT stay where they are (mapped from disk); each batch is gathered there.
    held = device if train_x.numel() * train_x.element_size() <= RESIDENT else train_x.device
    x, y = train_x.to(held), train_y.to(held)
    n = len(y)
    progress = Progress("linear evaluation", settings.epochs, unit="epochs")
    with torch.no_grad():
        for epoch in range(settings.epochs):
            progress.update(epoch)
            order = torch.randperm(n, generator=g).to(device)
            for start in range(0, n, settings.batch_size):
                idx = order[start:start + settings.batch_size]
                xb = x.index_select(0, idx.to(held)).to(device, non_blocking=True)
                err = torch.softmax(torch.addmm(bias, xb, weight.t()), dim=1)
                err[torch.arange(len(idx), device=device), y.index_select(0, idx.to(held)).to(device)] -= 1.0
                err /= len(idx)
                weight.grad = err.t().mm(xb)
                bias.grad = err.sum(0)
                opt.step()
    progress.update(settings.epochs)
    progress.close()
    return clf


def fit_linear_autograd(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: LinearSettings,
                        device: torch.device) -> torch.nn.Linear:
    """The same training with autograd: the plain reference for `fit_linear`."""
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    clf = torch.nn.Linear(train_x.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=settings.lr)
    x, y = train_x.to(device), train_y.to(device)
    n = len(y)
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=g).to(device)
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clf


@torch.no_grad()
def accuracy(clf: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             chunk: int = 65536) -> float:
    """Accuracy over chunks of rows (the features may be mapped from disk, the logits large)."""
    correct = sum(int((clf(x[i:i + chunk].to(device)).argmax(1).cpu() == y[i:i + chunk]).sum())
                  for i in range(0, len(y), chunk))
    return correct / max(len(y), 1)


def evaluate_linear(run_dir: str | Path, init: str = "trained", dataset: str | None = None,
                    root: str | None = None, settings: LinearSettings | None = None,
                    device: str | None = None, log=print) -> dict[str, Any]:
    """Linear accuracy of a run's backbone; written to <run>/eval/ and TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from rrdist.data.beton import ensure_prepared
    from rrdist.eval.features import cached_features, load_backbone

    settings = (settings or LinearSettings()).validate()
    dev = evaluation_device(device)
    run_dir = Path(run_dir).expanduser().resolve()
    backbone, cfg, fingerprint = load_backbone(run_dir, init)
    dataset = dataset or cfg.dataset
    if cfg.data_uri and root is None:  # the run read shared data: stage it here too
        from rrdist.data.staging import stage

        stage(cfg.data_uri, dataset, cfg.root, log=log)
    manifest = ensure_prepared(dataset, root or cfg.root, log=log)
    start = time.perf_counter()
    train_x, train_y, hit_train = cached_features(run_dir, backbone, fingerprint, manifest, "train", dev)
    test_x, test_y, hit_test = cached_features(run_dir, backbone, fingerprint, manifest, "test", dev)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    clf = fit_linear(train_x, train_y, manifest["num_classes"], settings, dev)
    result = {
        "evaluation": "linear", "init": init, "dataset": dataset, "pretrain_dataset": cfg.dataset,
        "test_accuracy": accuracy(clf, test_x, test_y, dev), "train_accuracy": accuracy(clf, train_x, train_y, dev),
        "settings": vars(settings), "feature_dim": int(train_x.shape[1]),
        "n_train": int(len(train_y)), "n_test": int(len(test_y)), "features_cached": hit_train and hit_test,
        "features_s": round(features_s, 3), "fit_s": round(time.perf_counter() - start, 3),
    }
    stem = result_stem(run_dir, f"linear-{init}-{dataset}", result["settings"])
    atomic.write_json(run_dir / "eval" / f"{stem}.json", result)
    with SummaryWriter(str(run_dir / "tb")) as writer:
        writer.add_scalar(f"eval/linear_{init}_{dataset}", result["test_accuracy"], cfg.epochs)
    return result
