"""Writing and checking FFCV .beton files: one per split, recorded in a manifest.

Layout: `<root>/ffcv/<dataset>/{train,test}.beton` and `manifest.json`, which records each
file's size and SHA-256, the image shape, the classes and the normalisation statistics.
Everything downstream (loaders, evaluation) reads its facts from the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rrdist import atomic
from rrdist.data.datasets import DATASETS, Split, get_spec, read_listed
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

    from rrdist.data.ffcv_import import dataset_writer

    DatasetWriter = dataset_writer()

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
    crop = manifest.get("eval_crop", 1.0)
    if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0 < crop <= 1:
        return "has an 'eval_crop' that is not a fraction in (0, 1]"
    if not isinstance(manifest.get("storage", {}), dict):
        return "has a 'storage' that is not an object"
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


STORAGES = ("raw", "jpeg")
JPEG_VIEW_SIZE = 224  # the view size of JPEG-stored data unless --image-size says otherwise


def _check_settings(image_size: int | None, storage: str, max_side: int, quality: int) -> None:
    if image_size is not None and not 8 <= image_size <= 1024:
        raise DataError(f"--image-size must be between 8 and 1024 pixels (got {image_size}): pass e.g. --image-size 32")
    if storage not in STORAGES:
        raise DataError(f"unknown --storage '{storage}': choose raw (arrays of one size) or jpeg (any size, streamed)")
    if not 16 <= max_side <= 4096:
        raise DataError(f"--max-side must be between 16 and 4096 pixels (got {max_side}): pass e.g. --max-side 256")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be between 1 and 100 (got {quality}): pass e.g. --quality 90")


def read_class_list(path: str | os.PathLike | None) -> list[str] | None:
    """Class folder names from a file (one per line or separated by spaces; # starts a comment)."""
    if path is None:
        return None
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the class list {path} ({type(e).__name__}): pass a text file of class "
                        f"folder names") from None
    names = [w for line in text.splitlines() for w in line.split("#")[0].split()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"the class list {path} is empty or names a class twice: list each class folder once")
    return names


def _same_settings(existing: dict[str, Any], image_size: int | None, storage: dict[str, Any],
                   keep: list[str] | None) -> bool:
    """Whether prepared data was written with these settings (older manifests: raw, every class)."""
    return ((image_size is None or existing["image_size"] == image_size)
            and existing.get("storage", {"format": "raw"}) == storage and existing.get("class_list") == keep)


def prepare(dataset: str, root: str | os.PathLike, download: bool = False, image_size: int | None = None,
            force: bool = False, num_workers: int | None = None, log=print, storage: str | None = None,
            max_side: int | None = None, quality: int | None = None,
            classes: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the .beton files of `dataset` unless valid ones exist; return the manifest.

    `storage` raw keeps images as arrays of one size (read whole); jpeg streams image files of
    any size into JPEG records of at most `max_side` pixels (`quality`), for views of `image_size`
    (224 unless given). `classes`: a file of the class folders to keep. Storage settings not given
    are those of the data already prepared there, else the dataset's defaults (256 px, quality 90)."""
    spec = get_spec(dataset)
    before = (read_manifest(dataset, root) or {}).get("storage") or {}
    storage = storage if storage is not None else before.get("format", spec.storage)
    max_side = max_side if max_side is not None else before.get("max_side", 256)
    quality = quality if quality is not None else before.get("quality", 90)
    _check_settings(image_size, storage, max_side, quality)
    if storage == "jpeg" and spec.lister is None:
        raise DataError(f"{dataset} cannot be stored as JPEG: --storage jpeg is for image trees "
                        f"({', '.join(k for k, v in DATASETS.items() if v.lister)})")
    if classes is not None and spec.lister is None:
        raise DataError(f"--classes is for image trees, not {dataset}")
    keep = read_class_list(classes) or (list(spec.classes) if spec.classes else None)
    check_folder(root, "--root")
    directory = beton_dir(dataset, root)
    existing = read_manifest(dataset, root)
    if existing is not None and not force and not _problems(directory, existing):
        if _same_settings(existing, image_size, _storage_entry(storage, max_side, quality), keep):
            counts = ", ".join(f"{k}: {v['n']}" for k, v in existing["splits"].items())
            log(f"reusing {directory} ({counts})")
            existing["dir"] = str(directory)
            return existing
    source = Path(root).expanduser().resolve() if spec.needs_root or download else None
    workers = num_workers or min(8, os.cpu_count() or 1)
    if storage == "jpeg":
        manifest = _write_jpeg(spec, source, directory, image_size or spec.image_size or JPEG_VIEW_SIZE,
                               max_side, quality, keep, workers, log)
    else:
        reader = spec.reader if keep is None else read_listed(spec.lister, keep)
        manifest = _write_raw(spec, reader(source, download, image_size or spec.image_size), directory,
                              workers, log)
    manifest.update({"format_version": FORMAT_VERSION, "dataset": dataset, "class_list": keep,
                     "source": str(source) if source else "embedded", "pretrain_split": spec.pretrain_split})
    atomic.write_json(directory / "manifest.json", manifest)
    manifest["dir"] = str(directory)
    return manifest


def _storage_entry(storage: str, max_side: int, quality: int) -> dict[str, Any]:
    return {"format": "jpeg", "max_side": max_side, "quality": quality} if storage == "jpeg" else {"format": "raw"}


def _write_raw(spec, splits: dict[str, Split], directory: Path, workers: int, log) -> dict[str, Any]:
    train = splits["train"]
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    else:  # measured on the training split, per channel
        pixels = train.images.reshape(-1, 3).astype(np.float64) / 255.0
        mean = tuple(round(float(v), 4) for v in pixels.mean(0))
        std = tuple(round(float(v), 4) for v in np.maximum(pixels.std(0), 1e-3))
    directory.mkdir(parents=True, exist_ok=True)
    with staged(directory, list(splits)) as paths:
        for name, split in splits.items():
            log(f"writing {directory / paths[name].name} ({len(split.labels)} images "
                f"{split.images.shape[1]}x{split.images.shape[2]})")
            _write_split(paths[name], split, workers)
    entries = {name: _entry(directory / f"{name}.beton", len(split.labels)) for name, split in splits.items()}
    return {"image_size": int(train.images.shape[1]), "channels": 3, "num_classes": len(train.classes),
            "classes": train.classes, "mean": list(mean), "std": list(std), "splits": entries,
            "storage": {"format": "raw"}}


def _write_jpeg(spec, source: Path, directory: Path, view_size: int, max_side: int, quality: int,
                keep: list[str] | None, workers: int, log) -> dict[str, Any]:
    from rrdist.data.jpeg_store import measure_normalisation, write_jpeg_split
    from rrdist.data.loader import stored_sizes

    splits = spec.lister(source, keep)  # every folder and file checked before anything is written
    train = splits["train"]
    mean, std = (spec.mean, spec.std) if spec.mean is not None else measure_normalisation(train)
    directory.mkdir(parents=True, exist_ok=True)
    with staged(directory, list(splits)) as paths:
        for name, split in splits.items():
            log(f"writing {directory / f'{name}.beton'} ({len(split.labels)} images as JPEG, longer side at most "
                f"{max_side}, quality {quality})")
            write_jpeg_split(paths[name], split, max_side, quality, workers)
    entries = {name: _entry(directory / f"{name}.beton", len(split.labels)) for name, split in splits.items()}
    largest = max(int(stored_sizes(directory / entry["file"]).max()) for entry in entries.values())
    # Evaluation reads ImageNet's centre crop (224 of 256) of images larger than the views, whole ones otherwise.
    return {"image_size": view_size, "channels": 3, "num_classes": len(train.classes), "classes": train.classes,
            "mean": list(mean), "std": list(std), "splits": entries, "largest_side": largest,
            "eval_crop": 224 / 256 if largest > view_size else 1.0,
            "storage": _storage_entry("jpeg", max_side, quality)}


@contextlib.contextmanager
def staged(directory: Path, names: list[str]):
    """Paths to write every split's .beton to; they replace the old files together, only once all
    are written (a failure in a later split leaves the earlier data as it was)."""
    paths = {name: directory / f".{name}.beton.new" for name in names}
    try:
        yield paths
        for name, path in paths.items():
            os.replace(path, directory / f"{name}.beton")
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


def _entry(path: Path, n: int) -> dict[str, Any]:
    return {"file": path.name, "n": int(n), "bytes": path.stat().st_size, "sha256": sha256(path)}


def ensure_prepared(dataset: str, root: str | os.PathLike, log=print) -> dict[str, Any]:
    """Verified manifest, writing the data first when nothing has been prepared yet (a damaged
    manifest is reported, not silently replaced)."""
    if read_manifest(dataset, root, strict=True) is None:
        return prepare(dataset, root, log=log)
    return load_manifest(dataset, root)

