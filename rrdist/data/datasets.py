"""Dataset registry and readers of each dataset's distribution format.

A reader turns a dataset's files into whole arrays, per split: uint8 images [N, H, W, 3], int64
labels [N] and the class names. It runs once, when the .beton files are written.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rrdist.errors import DataError, first_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    classes: list[str]


Reader = Callable[[Path | None, bool, int | None], dict[str, Split]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: Reader
    image_size: int | None  # None: taken from the images (or --image-size)
    mean: tuple[float, float, float] | None  # None: measured on the training split
    std: tuple[float, float, float] | None
    needs_root: bool = True
    summary: str = ""


# --------------------------------------------------------------------------- digits
def read_digits(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    """scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB, fixed stratified 80/20 split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = image_size or 32
    digits = load_digits()
    gray = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    big = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    classes = [str(c) for c in range(10)]
    return {"train": Split(images[idx_train], labels[idx_train], classes),
            "test": Split(images[idx_test], labels[idx_test], classes)}


# --------------------------------------------------------------------------- image folders
def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir())


def read_image_tree(split_dirs: dict[str, Path], image_size: int | None,
                    classes: list[str] | None = None) -> dict[str, Split]:
    """Read `<split>/<class>/<image>` trees; class indices follow sorted class-folder names."""
    from PIL import Image
    from tqdm import tqdm

    if classes is None:
        classes = [p.name for p in _class_dirs(next(iter(split_dirs.values())))]
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, Split] = {}
    for split, split_dir in split_dirs.items():
        files: list[tuple[Path, int]] = []
        for class_dir in _class_dirs(split_dir):
            if class_dir.name not in index:
                raise DataError(f"class folder {class_dir} is not among the training classes: "
                                f"give every split the same class folders")
            files += [(f, index[class_dir.name]) for f in sorted(class_dir.iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"no images found in {split_dir}/<class>/: expected files such as "
                            f"{split_dir}/<class>/0001.jpg")
        arrays = []
        for path, _ in tqdm(files, desc=f"reading {split}", unit="img", leave=False):
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    if image_size is not None and img.size != (image_size, image_size):
                        img = img.resize((image_size, image_size), Image.BILINEAR)
                    arrays.append(np.asarray(img, dtype=np.uint8))
            except OSError as e:
                raise DataError(f"cannot read image {path} ({e}): remove or replace the file") from None
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(f"images in {split_dir} have different sizes {sorted(shapes)[:3]}: "
                            f"pass --image-size N to resize them")
        out[split] = Split(np.stack(arrays), np.array([c for _, c in files], dtype=np.int64), classes)
    return out


def _find_tree(root: Path) -> Path | None:
    """The folder under `root` that holds train/<class>/ (root itself or one level down)."""
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / "train").is_dir() and _class_dirs(cand / "train"):
            return cand
    return None


def _require_root(root: Path | None, dataset: str) -> Path:
    if root is None or not Path(root).is_dir():
        raise DataError(f"data root '{root}' does not exist: pass --root DIR holding the {dataset} files"
                        f" (or add --download where the dataset has one)")
    return Path(root)


def read_imagefolder(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    root = _require_root(root, "imagefolder")
    tree = _find_tree(root)
    if tree is None:
        raise DataError(f"no image folders under {root}: expected {root}/train/<class>/*.jpg "
                        f"and {root}/test/<class>/*.jpg")
    test_dir = next((tree / s for s in ("test", "val") if (tree / s).is_dir()), None)
    if test_dir is None:
        raise DataError(f"no test split under {tree}: add {tree}/test/<class>/ (or val/)")
    return read_image_tree({"train": tree / "train", "test": test_dir}, image_size)


# --------------------------------------------------------------------------- CIFAR-10
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {path} ({e}): re-download the dataset") from None


def read_cifar_batches(batch_dir: Path) -> dict[str, Split]:
    """torchvision's `cifar-10-batches-py` pickles."""
    def load(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            d = _unpickle(batch_dir / name)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    classes = CIFAR10_CLASSES
    meta = batch_dir / "batches.meta"
    if meta.is_file():
        classes = [c.decode() for c in _unpickle(meta)[b"label_names"]]
    train = load([f"data_batch_{i}" for i in range(1, 6)])
    test = load(["test_batch"])
    return {"train": Split(*train, classes), "test": Split(*test, classes)}


def read_cifar10(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    if download:
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            from torchvision.datasets import CIFAR10
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # no network, a broken mirror, ...
            raise DataError(f"downloading CIFAR-10 failed ({first_line(e)}):"
                            f" place cifar-10-batches-py/ or train/<class>/ folders under {root}") from None
    root = _require_root(root, "cifar10")
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file():
            return read_cifar_batches(cand)
    tree = _find_tree(root)
    if tree is not None and (tree / "test").is_dir():
        names = [p.name for p in _class_dirs(tree / "train")]
        classes = CIFAR10_CLASSES if sorted(names) == sorted(CIFAR10_CLASSES) else names
        return read_image_tree({"train": tree / "train", "test": tree / "test"}, image_size or 32, classes)
    raise DataError(f"no CIFAR-10 found under {root}: expected cifar-10-batches-py/ or train/<class>/ and "
                    f"test/<class>/ folders (or pass --download)")


# --------------------------------------------------------------------------- registry
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", read_digits, 32, None, None, needs_root=False,
                          summary="scikit-learn's bundled 8x8 digits as 32x32 RGB (embedded default)"),
    "cifar10": DatasetSpec("cifar10", read_cifar10, 32, (0.491, 0.482, 0.447), (0.247, 0.243, 0.262),
                           summary="CIFAR-10: cifar-10-batches-py pickles or train/test image folders"),
    "imagefolder": DatasetSpec("imagefolder", read_imagefolder, None, None, None,
                               summary="any train/<class>/*, test/<class>/* image tree"),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
