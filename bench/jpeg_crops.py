"""The crops of the JPEG path against torchvision's RandomResizedCrop on the original images.

On the same images (a prepared tree's training split): rrdist draws each view's crop in the stored
image's own size (longest side at most --max-side) and reads it from the square base image;
torchvision draws `RandomResizedCrop.get_params` on the original file's size. Compared: the
crop's share of the image's area (scale) and its aspect in the image's own pixels, as
distributions (two-sample Kolmogorov-Smirnov distance, means, quantiles); the share of each image
a crop can reach (edges); and the resolution a crop is read at (source pixels per view pixel,
per side), which is what one decode at a bounded size costs.

    python bench/jpeg_crops.py --tree DIR [--views 20000] [--json F]
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from rrdist.data.augment import KViewAugment
from rrdist.data.beton import load_manifest, split_path
from rrdist.data.keyed import ImageDraws
from rrdist.data.loader import base_side, stored_sizes


def ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.unique(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def summary(x: np.ndarray) -> dict:
    return {"mean": round(float(x.mean()), 4), "q10": round(float(np.quantile(x, 0.1)), 4),
            "median": round(float(np.median(x)), 4), "q90": round(float(np.quantile(x, 0.9)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--views", type=int, default=20000)
    parser.add_argument("--view-size", type=int, default=224)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    manifest = load_manifest("imagefolder", args.tree)
    stored = stored_sizes(split_path(manifest, "train"))
    files = sorted(p for p in (args.tree / "train").glob("*/*") if p.is_file())
    pick = np.random.default_rng(0).choice(len(files), size=min(args.views, len(files)), replace=False)
    original = np.array([Image.open(files[i]).size[::-1] for i in pick])  # (h, w) from the file's header
    ours_hw = torch.from_numpy(stored[pick])
    p = KViewAugment(args.view_size, (0.5,) * 3, (0.25,) * 3).params(
        ImageDraws(0, 0, torch.from_numpy(pick)).view_uniforms(1, 33), ours_hw[:, 0], ours_hw[:, 1])
    h, w = p.height.numpy(), p.width.numpy()
    ours_scale = h * w / (ours_hw[:, 0] * ours_hw[:, 1]).numpy()
    # aspect in the original's pixels: the stored image is the original scaled by one factor per axis
    sy, sx = original[:, 0] / ours_hw[:, 0].numpy(), original[:, 1] / ours_hw[:, 1].numpy()
    ours_aspect = (w * sx) / (h * sy)
    torch.manual_seed(0)
    tv = np.array([RandomResizedCrop.get_params(torch.empty(1, int(a), int(b)), [0.08, 1.0], [3 / 4, 4 / 3])
                   for a, b in original])
    tv_scale = tv[:, 2] * tv[:, 3] / (original[:, 0] * original[:, 1])
    tv_aspect = tv[:, 3] / tv[:, 2]
    side = base_side(args.view_size, manifest["largest_side"])
    # source pixels per view pixel along the crop's longer side: from the base (ours) and the file (torchvision)
    ours_res = np.maximum(h / ours_hw[:, 0].numpy(), w / ours_hw[:, 1].numpy()) * side / args.view_size
    tv_res = np.maximum(tv[:, 2], tv[:, 3]) / args.view_size
    centre_crop_loss = 1 - np.minimum(original[:, 0], original[:, 1]) / np.maximum(original[:, 0], original[:, 1])
    record = {
        "benchmark": "jpeg_crops", "date": str(date.today()), "views": int(len(pick)), "view_size": args.view_size,
        "base_side": side, "max_side": manifest["storage"]["max_side"],
        "original_size": {"h": summary(original[:, 0].astype(float)), "w": summary(original[:, 1].astype(float))},
        "scale": {"rrdist": summary(ours_scale), "torchvision": summary(tv_scale), "ks": round(ks(ours_scale, tv_scale), 4)},
        "log_aspect": {"rrdist": summary(np.log(ours_aspect)), "torchvision": summary(np.log(tv_aspect)),
                       "ks": round(ks(np.log(ours_aspect), np.log(tv_aspect)), 4)},
        "reachable_area": {"rrdist": 1.0, "torchvision": 1.0,
                           "a_square_centre_crop_decode_would_lose": summary(centre_crop_loss)},
        "source_pixels_per_view_pixel": {"rrdist": summary(ours_res), "torchvision": summary(tv_res),
                                         "views_enlarged_rrdist": round(float((ours_res < 1).mean()), 4),
                                         "views_enlarged_torchvision": round(float((tv_res < 1).mean()), 4)},
    }
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
