"""Writing and checking FFCV .beton files: one per split, recorded in a manifest.

Layout: `<root>/ffcv/<dataset>/{train,test}.beton` and `manifest.json`, which records each
file's size and SHA-256, the image shape, the classes and the normalisation statistics.
Everything downstream (loaders, evaluation) reads its facts from the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rrdist import atomic
from rrdist.data.datasets import Split, get_spec
from rrdist.errors import DataError
from rrdist.storage import check_folder

FORMAT_VERSION = 2  # 2: an `index` field (position in the split), for methods that label images


def beton_dir(dataset: str, root: str | os.PathLike) -> Path:
    return Path(root).expanduser().resolve() / "ffcv" / dataset


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_split(path: Path, split: Split, num_workers: int) -> None:
    from rrdist.data.ffcv_import import load_ffcv

    load_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Indexed:  # FFCV's writer takes any indexable of (image, label, index)
        def __len__(self) -> int:
            return len(split.labels)

        def __getitem__(self, i: int):
            return split.images[i], int(split.labels[i]), i

    # Small images are stored raw: decoding raw pixels is several times faster than JPEG.
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "index": IntField()}
    with atomic.atomic_path(path) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(Indexed())


def _problems(directory: Path, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for split, entry in manifest.get("splits", {}).items():
        path = directory / entry["file"]
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{path} is truncated or altered ({path.stat().st_size} bytes, expected {entry['bytes']})")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{path} is corrupt (checksum mismatch)")
    return problems


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a manifest's shape (its keys and their kinds), or None."""
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    kinds = {"dataset": str, "image_size": int, "num_classes": int, "mean": list, "std": list, "splits": dict}
    for key, kind in kinds.items():
        if not isinstance(manifest.get(key), kind):
            return f"lacks a valid '{key}'"
    for split, entry in manifest["splits"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and
                all(isinstance(entry.get(k), int) for k in ("n", "bytes")) and isinstance(entry.get("sha256"), str)):
            return f"lacks a valid entry for the '{split}' split"
    if "train" not in manifest["splits"] or len(manifest["mean"]) != 3 or len(manifest["std"]) != 3:
        return "lacks the train split or the normalisation"
    return None


def read_manifest(dataset: str, root: str | os.PathLike, strict: bool = False) -> dict[str, Any] | None:
    """The manifest of prepared data; None when there is none, or (unless `strict`) when it is damaged.
    With `strict`, a damaged one is a one-line DataError naming the fix."""
    path = beton_dir(dataset, root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if isinstance(manifest, dict) and manifest.get("format_version") != FORMAT_VERSION:
            return None  # written by an older rrdist: prepared again
        problem = manifest_problem(manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"is not valid JSON ({type(e).__name__})"
    if problem is None:
        return manifest
    if strict:
        raise DataError(f"{path} {problem}: run `rrdist data prepare {dataset} --root {root} --force` to write the "
                        f"data again")
    return None


def load_manifest(dataset: str, root: str | os.PathLike) -> dict[str, Any]:
    """The verified manifest of prepared data; a one-line DataError naming the fix otherwise."""
    directory = beton_dir(dataset, root)
    manifest = read_manifest(dataset, root, strict=True)
    if manifest is None:
        raise DataError(f"no prepared {dataset} data in {directory}: run `rrdist data prepare {dataset} --root {root}`")
    problems = _problems(directory, manifest)
    if problems:
        raise DataError(f"{problems[0]}: run `rrdist data prepare {dataset} --root {root} --force` to write it again")
    manifest["dir"] = str(directory)
    return manifest


def split_path(manifest: dict[str, Any], split: str) -> Path:
    if split not in manifest["splits"]:
        raise DataError(f"{manifest['dataset']} has no '{split}' split (it has {', '.join(manifest['splits'])})")
    return Path(manifest["dir"]) / manifest["splits"][split]["file"]


def prepare(dataset: str, root: str | os.PathLike, download: bool = False, image_size: int | None = None,
            force: bool = False, num_workers: int | None = None, log=print) -> dict[str, Any]:
    """Write the .beton files of `dataset` unless valid ones exist; return the manifest."""
    spec = get_spec(dataset)
    if image_size is not None and not 8 <= image_size <= 1024:
        raise DataError(f"--image-size must be between 8 and 1024 pixels (got {image_size}): pass e.g. --image-size 32")
    check_folder(root, "--root")
    directory = beton_dir(dataset, root)
    existing = read_manifest(dataset, root)
    if existing is not None and not force and not _problems(directory, existing):
        if image_size is None or existing["image_size"] == image_size:
            counts = ", ".join(f"{k}: {v['n']}" for k, v in existing["splits"].items())
            log(f"reusing {directory} ({counts})")
            existing["dir"] = str(directory)
            return existing
    source = Path(root).expanduser().resolve() if spec.needs_root or download else None
    splits = spec.reader(source, download, image_size or spec.image_size)
    train = splits["train"]
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    else:  # measured on the training split, per channel
        pixels = train.images.reshape(-1, 3).astype(np.float64) / 255.0
        mean = tuple(round(float(v), 4) for v in pixels.mean(0))
        std = tuple(round(float(v), 4) for v in np.maximum(pixels.std(0), 1e-3))
    directory.mkdir(parents=True, exist_ok=True)
    workers = num_workers or min(8, os.cpu_count() or 1)
    entries = {}
    for name, split in splits.items():
        path = directory / f"{name}.beton"
        log(f"writing {path} ({len(split.labels)} images {split.images.shape[1]}x{split.images.shape[2]})")
        _write_split(path, split, workers)
        entries[name] = {"file": path.name, "n": int(len(split.labels)), "bytes": path.stat().st_size,
                         "sha256": sha256(path)}
    manifest = {
        "format_version": FORMAT_VERSION, "dataset": dataset, "source": str(source) if source else "embedded",
        "image_size": int(train.images.shape[1]), "channels": 3, "num_classes": len(train.classes),
        "classes": train.classes, "mean": list(mean), "std": list(std), "splits": entries,
        "pretrain_split": spec.pretrain_split,
    }
    atomic.write_json(directory / "manifest.json", manifest)
    manifest["dir"] = str(directory)
    return manifest


def ensure_prepared(dataset: str, root: str | os.PathLike, log=print) -> dict[str, Any]:
    """Verified manifest, writing the data first when nothing has been prepared yet (a damaged
    manifest is reported, not silently replaced)."""
    if read_manifest(dataset, root, strict=True) is None:
        return prepare(dataset, root, log=log)
    return load_manifest(dataset, root)

