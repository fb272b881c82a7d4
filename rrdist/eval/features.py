"""Backbone features of a dataset split, extracted once and cached in the run folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rrdist.eval.results import evaluation_device
from rrdist.config import PretrainConfig
from rrdist.errors import DataError
from rrdist.storage import CONFIG_FILE

CACHE_FORMAT = 3  # bump when extraction changes, so older caches are recomputed (3: files on disk)


def load_backbone(run_dir: Path, init: str) -> tuple[torch.nn.Module, PretrainConfig, str]:
    """The run's trained backbone, or (init='random') its initial weights: the lower bound.

    Returns the backbone, the run's config and a fingerprint of the weights for the feature cache.
    """
    from rrdist.models import build_backbone
    from rrdist.models.backbone_file import BACKBONE_FILE, load_backbone_file

    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise DataError(f"{run_dir} is not a run folder (no config.yaml): pass the --out folder of `rrdist pretrain`")
    cfg = PretrainConfig.shared_from_yaml(config_file)  # the method's own settings are not needed here
    if init == "random":
        torch.manual_seed(cfg.seed)  # the same weights the pretraining started from
        backbone = build_backbone(cfg.backbone)
        fingerprint = f"random-{cfg.backbone}-{cfg.seed}"
    elif init == "trained":
        path = run_dir / BACKBONE_FILE
        saved = load_backbone_file(path)
        backbone = build_backbone(cfg.backbone)
        if not isinstance(saved, dict) or not isinstance(saved.get("backbone"), dict):
            raise DataError(f"{path} holds no backbone weights: run the pretraining again (rrdist pretrain "
                            f"--out {run_dir})")
        try:
            backbone.load_state_dict(saved["backbone"])
        except RuntimeError:
            raise DataError(f"{path} holds weights that are not a {cfg.backbone}, the backbone config.yaml names: "
                            f"restore the run's own config.yaml or run the pretraining again") from None
        stat = path.stat()
        fingerprint = f"trained-{stat.st_size}-{stat.st_mtime_ns}"
    else:
        raise DataError(f"unknown --init '{init}': choose trained or random")
    return backbone, cfg, fingerprint


def cached_features(run_dir: Path, backbone: torch.nn.Module, fingerprint: str, manifest: dict[str, Any],
                    split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Features of `split`, from the cache when the same weights and data made them; (feats, labels, hit).
    The features live in files of the run folder and are mapped, not read, into memory."""
    from rrdist.data.augment import KViewAugment
    from rrdist.data.beton import split_path
    from rrdist.data.features import extract_to_files, load_feature_files
    from rrdist.data.loader import decoding

    beton = split_path(manifest, split)
    key = json.dumps({"format": CACHE_FORMAT, "weights": fingerprint, "data": manifest["splits"][split]["sha256"]},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = run_dir / "features" / f"{manifest['dataset']}-{split}-{digest}"
    if folder.is_dir():
        try:
            return (*load_feature_files(folder), True)
        except (OSError, ValueError):
            pass  # an unreadable cache is recomputed
    prep = KViewAugment(manifest["image_size"], tuple(manifest["mean"]), tuple(manifest["std"]))
    extract_to_files(backbone.to(device), beton, prep, device, folder, **decoding(manifest))
    return (*load_feature_files(folder), False)


def run_features(run_dir: str | Path, splits: tuple[str, ...], init: str = "trained", dataset: str | None = None,
                 root: str | None = None, device: str | None = None, log=print):
    """(manifest, run config, {split: (features, labels)}) of a run's backbone, cached in the run folder."""
    from rrdist.data.beton import ensure_prepared

    run_dir = Path(run_dir).expanduser().resolve()
    backbone, cfg, fingerprint = load_backbone(run_dir, init)
    manifest = ensure_prepared(dataset or cfg.dataset, root or cfg.root, log=log)
    dev = evaluation_device(device)
    out = {}
    for split in splits:
        feats, labels, _ = cached_features(run_dir, backbone, fingerprint, manifest, split, dev)
        out[split] = (feats, labels)
    return manifest, cfg, out


def split_images(manifest: dict[str, Any], split: str, indices: torch.Tensor) -> torch.Tensor:
    """uint8 images [len(indices), H, W, 3] of a split, by position (for pictures)."""
    from rrdist.data.beton import split_path
    from rrdist.data.loader import decoding, image_loader

    wanted = set(indices.tolist())
    found: dict[int, torch.Tensor] = {}
    loader = image_loader(split_path(manifest, split), 512, train=False, drop_last=False, indices=True,
                          **decoding(manifest))
    for images, _, idx in loader:
        for row, i in enumerate(idx.tolist()):
            if i in wanted:
                found[i] = images[row].clone()
    return torch.stack([found[int(i)] for i in indices])
