"""Linear evaluation, side by side: cached features against the frozen backbone run every epoch.

rrdist:    `evaluate_linear`: the backbone runs once over the training and test images (FFCV,
           features cached in the run folder), then the linear classifier trains on the cached
           features. The timed run starts with no cache, so extraction (and FFCV's JIT) counts.
reference: the usual protocol: a torchvision-style Dataset (ToTensor, Normalize) read by a
           DataLoader with one worker per core; every mini-batch of every epoch goes through the
           frozen backbone before the linear layer.

Both: the same conv4 backbone (a run folder's, or a seeded random initialisation), CIFAR-10,
Adam lr 1e-3, mini-batch 128, the same number of epochs, the same torch threads. Run:

    python bench/linear_eval.py --root DATA [--run RUN_DIR] [--epochs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image

from rrdist.methods import make_config
from rrdist.data.beton import ensure_prepared
from rrdist.data.datasets import get_spec
from rrdist.eval.features import load_backbone
from rrdist.eval.linear import LinearSettings, evaluate_linear
from rrdist.models import build_backbone
from rrdist.models.backbone_file import BACKBONE_FILE, save_backbone
from reference import CIFAR_MEAN, CIFAR_STD, reference_linear_eval


class PlainImages(torch.utils.data.Dataset):
    def __init__(self, images, labels) -> None:
        self.images, self.labels = images, labels
        self.transform = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_run_folder(run: str | None, root: str, scratch: Path) -> Path:
    """A run folder holding only the backbone and config, so no feature cache exists yet."""
    folder = scratch / "run"
    folder.mkdir()
    if run:
        shutil.copy(Path(run) / "config.yaml", folder / "config.yaml")
        shutil.copy(Path(run) / BACKBONE_FILE, folder / BACKBONE_FILE)
    else:
        cfg = make_config(dataset="cifar10", root=str(root), backbone="conv4", out=str(folder))
        (folder / "config.yaml").write_text(cfg.to_yaml())
        torch.manual_seed(cfg.seed)
        save_backbone(folder, build_backbone("conv4"), cfg.to_dict(), 0)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--run", default=None, help="a conv4 run folder (default: a seeded random conv4)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.cores)

    ensure_prepared("cifar10", args.root)
    splits = get_spec("cifar10").reader(Path(args.root).resolve(), False, 32)
    with tempfile.TemporaryDirectory() as scratch:
        folder = bench_run_folder(args.run, args.root, Path(scratch))
        backbone, _, _ = load_backbone(folder, "trained")

        loader = {name: torch.utils.data.DataLoader(
            PlainImages(splits[name].images, splits[name].labels), batch_size=128, shuffle=name == "train",
            num_workers=args.cores, persistent_workers=True) for name in ("train", "test")}
        start = time.perf_counter()
        ref_acc = reference_linear_eval(backbone, loader["train"], loader["test"], 10, backbone.feature_size,
                                        args.epochs)
        ref_s = time.perf_counter() - start
        del loader

        start = time.perf_counter()
        result = evaluate_linear(folder, root=args.root, settings=LinearSettings(epochs=args.epochs), device="cpu",
                                 log=lambda *a: None)
        ours_s = time.perf_counter() - start
    ours_acc = 100.0 * result["test_accuracy"]
    row = {"epochs": args.epochs, "backbone": "conv4", "weights": args.run or "random (seed 0)",
           "rrdist_s": round(ours_s, 1), "rrdist_features_s": result["features_s"], "rrdist_fit_s": result["fit_s"],
           "reference_s": round(ref_s, 1), "ratio": round(ref_s / ours_s, 1),
           "rrdist_accuracy": round(ours_acc, 2), "reference_accuracy": round(ref_acc, 2),
           "accuracy_gap": round(abs(ours_acc - ref_acc), 2)}
    print(f"linear evaluation, {args.epochs} epochs: rrdist {ours_s:.1f} s (features {result['features_s']:.1f} s, "
          f"fit {result['fit_s']:.1f} s), {ours_acc:.2f}% | reference {ref_s:.1f} s, {ref_acc:.2f}% | "
          f"x{ref_s / ours_s:.1f}, accuracy gap {abs(ours_acc - ref_acc):.2f} points")
    record = {"benchmark": "linear_eval", "date": str(date.today()), "machine": platform.processor() or
              platform.machine(), "cores": args.cores, "torch": torch.__version__, "device": "cpu", "rows": [row]}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
