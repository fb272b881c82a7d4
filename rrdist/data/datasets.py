"""Dataset registry and readers of each dataset's distribution format.

A reader turns a dataset's files into whole arrays, per split: uint8 images [N, H, W, 3], int64
labels [N] and the class names. It runs once, when the .beton files are written. Image trees too
large for memory (ImageNet) are instead listed (`FileSplit`: paths and labels) and written as JPEG
one image at a time.
"""

from __future__ import annotations

import csv
import os
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


@dataclass
class FileSplit:
    """A split as image files of any size, read one at a time when it is written."""

    files: list[Path]
    labels: np.ndarray  # int64 [N]
    classes: list[str]


Reader = Callable[[Path | None, bool, int | None], dict[str, Split]]
Lister = Callable[[Path, list[str] | None], dict[str, FileSplit]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: Reader
    image_size: int | None  # None: taken from the images (or --image-size)
    mean: tuple[float, float, float] | None  # None: measured on the training split
    std: tuple[float, float, float] | None
    needs_root: bool = True
    summary: str = ""
    pretrain_split: str = "train"  # the split self-supervised pretraining reads
    lister: Lister | None = None  # lists image files: the dataset can be stored as JPEG, streamed
    storage: str = "raw"  # the default storage: "raw" (arrays in memory) or "jpeg" (streamed)
    classes: tuple[str, ...] | None = None  # a fixed class subset (ImageNet-100)


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


def read_images(paths: list[Path], image_size: int | None, split: str) -> list[np.ndarray]:
    """uint8 RGB arrays of image files, resized to image_size x image_size when given."""
    from PIL import Image
    from tqdm import tqdm

    arrays = []
    for path in tqdm(paths, desc=f"reading {split}", unit="img", leave=False):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if image_size is not None and img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except OSError as e:
            raise DataError(f"cannot read image {path} ({e}): remove or replace the file") from None
    return arrays


def list_image_tree(split_dirs: dict[str, Path], classes: list[str] | None = None,
                    keep: list[str] | None = None) -> dict[str, FileSplit]:
    """The files of `<split>/<class>/<image>` trees; class indices follow sorted class-folder names
    (or `classes`). `keep`: only these class folders. Checked before anything is read: an empty
    class folder, a class the training split lacks, an unreadable file."""
    if classes is None:
        classes = [p.name for p in _class_dirs(next(iter(split_dirs.values())))]
    if keep is not None:
        missing = sorted(set(keep) - set(classes))
        if missing:
            raise DataError(f"{len(missing)} of the classes asked for have no folder in "
                            f"{next(iter(split_dirs.values()))} (e.g. {missing[0]}): check the class list")
        classes = [c for c in classes if c in set(keep)]
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, FileSplit] = {}
    for split, split_dir in split_dirs.items():
        files: list[tuple[Path, int]] = []
        for class_dir in _class_dirs(split_dir):
            if class_dir.name not in index:
                if keep is not None:
                    continue
                raise DataError(f"class folder {class_dir} is not among the training classes: "
                                f"give every split the same class folders")
            found = [(f, index[class_dir.name]) for f in sorted(class_dir.iterdir())
                     if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise DataError(f"class folder {class_dir} holds no images: remove the folder or add its images")
            files += found
        if not files:
            raise DataError(f"no images found in {split_dir}/<class>/: expected files such as "
                            f"{split_dir}/<class>/0001.jpg")
        unreadable = next((f for f, _ in files if not os.access(f, os.R_OK) or not f.is_file()), None)
        if unreadable is not None:
            raise DataError(f"cannot read {unreadable} (no read permission, or not a file): fix its "
                            f"permissions or remove it")
        out[split] = FileSplit([f for f, _ in files], np.array([c for _, c in files], dtype=np.int64), classes)
    return out


def read_image_tree(split_dirs: dict[str, Path], image_size: int | None,
                    classes: list[str] | None = None) -> dict[str, Split]:
    """Read `<split>/<class>/<image>` trees into arrays (images of one size, or resized to one)."""
    out: dict[str, Split] = {}
    for split, listed in list_image_tree(split_dirs, classes).items():
        arrays = read_images(listed.files, image_size, split)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(f"images in {split_dirs[split]} have different sizes {sorted(shapes)[:3]}: "
                            f"pass --image-size N to resize them, or --storage jpeg to keep their sizes")
        out[split] = Split(np.stack(arrays), listed.labels, listed.classes)
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


def _imagefolder_dirs(root: Path | None) -> dict[str, Path]:
    root = _require_root(root, "imagefolder")
    tree = _find_tree(root)
    if tree is None:
        raise DataError(f"no image folders under {root}: expected {root}/train/<class>/*.jpg "
                        f"and {root}/test/<class>/*.jpg")
    test_dir = next((tree / s for s in ("test", "val") if (tree / s).is_dir()), None)
    if test_dir is None:
        raise DataError(f"no test split under {tree}: add {tree}/test/<class>/ (or val/)")
    return {"train": tree / "train", "test": test_dir}


def read_imagefolder(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    return read_image_tree(_imagefolder_dirs(root), image_size)


def list_imagefolder(root: Path, keep: list[str] | None) -> dict[str, FileSplit]:
    return list_image_tree(_imagefolder_dirs(root), keep=keep)


# --------------------------------------------------------------------------- ImageNet (ILSVRC-2012)
def _imagenet_base(root: Path) -> Path:
    """The folder holding train/<wnid>/: the root, Kaggle's ILSVRC/Data/CLS-LOC, or one level down."""
    for cand in (root, root / "ILSVRC" / "Data" / "CLS-LOC", *sorted(p for p in root.iterdir() if p.is_dir())):
        if (cand / "train").is_dir() and (cand / "val").is_dir() and _class_dirs(cand / "train"):
            return cand
    raise DataError(f"no ImageNet found under {root}: expected train/<wnid>/*.JPEG and val/ (in <wnid>/ folders, "
                    f"or flat with LOC_val_solution.csv)")


def _flat_val(base: Path, root: Path, classes: list[str]) -> FileSplit:
    """The validation images in one folder, labelled by Kaggle's LOC_val_solution.csv."""
    solution = next((p for p in (root / "LOC_val_solution.csv", base / "LOC_val_solution.csv",
                                 base.parent.parent.parent / "LOC_val_solution.csv") if p.is_file()), None)
    if solution is None:
        raise DataError(f"{base / 'val'} has no class folders and no LOC_val_solution.csv was found beside it: sort "
                        f"the validation images into val/<wnid>/ or add the CSV")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    with open(solution, newline="") as f:
        for row in csv.DictReader(f):
            wnid = (row.get("PredictionString") or "").split(" ")[0]
            if wnid in index:
                files.append(base / "val" / f"{row['ImageId']}.JPEG")
                labels.append(index[wnid])
    if not files:
        raise DataError(f"{solution} labels no image of the chosen classes: check the file")
    return FileSplit(files, np.array(labels, dtype=np.int64), classes)


def list_imagenet(root: Path, keep: list[str] | None) -> dict[str, FileSplit]:
    """ILSVRC-2012: train/<wnid>/*.JPEG; the labelled validation set is the test split."""
    root = _require_root(root, "imagenet")
    base = _imagenet_base(root)
    if _class_dirs(base / "val"):
        return list_image_tree({"train": base / "train", "test": base / "val"}, keep=keep)
    train = list_image_tree({"train": base / "train"}, keep=keep)["train"]
    return {"train": train, "test": _flat_val(base, root, train.classes)}


def imagenet100_classes() -> tuple[str, ...]:
    text = (Path(__file__).parent / "imagenet100.txt").read_text()
    return tuple(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


def read_listed(lister: Lister, keep: list[str] | None) -> Reader:
    """A reader (arrays in memory) over a lister's files, for raw storage of a listed dataset."""
    def read(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
        if image_size is None:
            raise DataError("raw storage needs one image size: pass --image-size N, or --storage jpeg")
        return {name: Split(np.stack(read_images(split.files, image_size, name)), split.labels, split.classes)
                for name, split in lister(root, keep).items()}
    return read


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


# --------------------------------------------------------------------------- CIFAR-100
def read_cifar100_pickles(folder: Path, coarse: bool) -> dict[str, Split]:
    """torchvision's `cifar-100-python` pickles (train, test, meta): fine or coarse (20) labels."""
    meta = _unpickle(folder / "meta")
    key = b"coarse" if coarse else b"fine"
    classes = [c.decode() for c in meta[key + b"_label_names"]]
    out = {}
    for split in ("train", "test"):
        d = _unpickle(folder / split)
        images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[split] = Split(np.ascontiguousarray(images), np.asarray(d[key + b"_labels"], dtype=np.int64), classes)
    return out


def _cifar100_reader(coarse: bool) -> Reader:
    def read(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
        if download:
            Path(root).mkdir(parents=True, exist_ok=True)
            try:
                from torchvision.datasets import CIFAR100
                CIFAR100(str(root), train=True, download=True)
            except Exception as e:
                raise DataError(f"downloading CIFAR-100 failed ({first_line(e)}): place cifar-100-python/ "
                                f"under {root}") from None
        root = _require_root(root, "cifar100")
        for cand in (root, root / "cifar-100-python"):
            if (cand / "train").is_file() and (cand / "meta").is_file():
                return read_cifar100_pickles(cand, coarse)
        raise DataError(f"no CIFAR-100 found under {root}: expected cifar-100-python/ (train, test, meta) "
                        f"(or pass --download)")
    return read


# --------------------------------------------------------------------------- STL-10
def read_stl10(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    """The binary distribution `stl10_binary/`: {train,test,unlabeled}_X.bin (column-major
    3x96x96 uint8 images), {train,test}_y.bin (labels 1-10), class_names.txt. The unlabeled
    100k images get label -1; they are what the paper pretrains on."""
    if download:
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            from torchvision.datasets import STL10
            STL10(str(root), split="train+unlabeled", download=True)
        except Exception as e:
            raise DataError(f"downloading STL-10 failed ({first_line(e)}): place stl10_binary/ under {root}") from None
    root = _require_root(root, "stl10")
    folder = next((c for c in (root, root / "stl10_binary") if (c / "train_X.bin").is_file()), None)
    if folder is None:
        raise DataError(f"no STL-10 found under {root}: expected stl10_binary/ with train_X.bin, train_y.bin, "
                        f"test_X.bin, test_y.bin, unlabeled_X.bin (or pass --download)")
    names = (folder / "class_names.txt")
    classes = names.read_text().split() if names.is_file() else [str(i) for i in range(10)]
    out = {}
    for split in ("train", "test", "unlabeled"):
        x_path = folder / f"{split}_X.bin"
        if not x_path.is_file():
            raise DataError(f"{x_path} is missing: the STL-10 binary distribution has train, test and unlabeled")
        raw = np.fromfile(x_path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise DataError(f"{x_path} is truncated ({raw.size} bytes): re-download STL-10")
        images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)  # stored column-major per channel
        if split == "unlabeled":
            labels = np.full(len(images), -1, dtype=np.int64)
        else:
            labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
            if len(labels) != len(images):
                raise DataError(f"{folder}/{split}_y.bin has {len(labels)} labels for {len(images)} images")
        out[split] = Split(np.ascontiguousarray(images), labels, classes)
    return out


# --------------------------------------------------------------------------- tiny-ImageNet
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def read_tiny_imagenet(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    """The official `tiny-imagenet-200` layout as distributed: wnids.txt, train/<wnid>/images/*.JPEG,
    val/images/*.JPEG labelled by val/val_annotations.txt (the test split here; the official test
    set has no labels)."""
    if download and not (Path(root) / "tiny-imagenet-200" / "wnids.txt").is_file():
        try:
            from torchvision.datasets.utils import download_and_extract_archive
            download_and_extract_archive(TINY_IMAGENET_URL, str(root))
        except Exception as e:
            raise DataError(f"downloading tiny-ImageNet failed ({first_line(e)}): get {TINY_IMAGENET_URL} "
                            f"and unzip it under {root}") from None
    root = _require_root(root, "tiny-imagenet")
    folder = next((c for c in (root, root / "tiny-imagenet-200") if (c / "wnids.txt").is_file()), None)
    if folder is None:
        raise DataError(f"no tiny-ImageNet found under {root}: expected tiny-imagenet-200/ with wnids.txt, "
                        f"train/ and val/val_annotations.txt")
    wnids = folder.joinpath("wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (folder / "words.txt").is_file():
        for line in folder.joinpath("words.txt").read_text().splitlines():
            wnid, _, name = line.partition("\t")
            words[wnid] = name.split(",")[0].strip()
    classes = [words.get(w, w) for w in wnids]

    def load(files: list[tuple[Path, int]], split: str) -> Split:
        arrays = read_images([path for path, _ in files], image_size, split)
        if not arrays:
            raise DataError(f"no images in tiny-ImageNet's {split} split under {folder}")
        return Split(np.stack(arrays), np.array([c for _, c in files], dtype=np.int64), classes)

    train = [(f, index[w]) for w in wnids for f in sorted((folder / "train" / w / "images").glob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES]
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"{annotations} is missing: tiny-ImageNet's validation labels live there")
    val = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations}: line '{line[:60]}' does not name an image and a wnid of wnids.txt")
        val.append((folder / "val" / "images" / fields[0], index[fields[1]]))
    return {"train": load(train, "train"), "test": load(sorted(val), "val")}


# --------------------------------------------------------------------------- SlimageNet
def read_slimagenet(root: Path | None, download: bool, image_size: int | None) -> dict[str, Split]:
    """SlimageNet64 (Antoniou et al., 2020) as image folders train/<class>/, val/<class>/, test/<class>/."""
    if download:
        raise DataError("SlimageNet has no download here: place its train/, val/ and test/ folders under --root")
    root = _require_root(root, "slimagenet")
    tree = _find_tree(root)
    if tree is None or not (tree / "test").is_dir():
        raise DataError(f"no SlimageNet found under {root}: expected train/<class>/, val/<class>/, test/<class>/")
    dirs = {"train": tree / "train", "test": tree / "test"}
    if (tree / "val").is_dir():
        dirs["val"] = tree / "val"
    return read_image_tree(dirs, image_size or 64)


# --------------------------------------------------------------------------- registry
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", read_digits, 32, None, None, needs_root=False,
                          summary="scikit-learn's bundled 8x8 digits as 32x32 RGB (embedded default)"),
    "cifar10": DatasetSpec("cifar10", read_cifar10, 32, (0.491, 0.482, 0.447), (0.247, 0.243, 0.262),
                           summary="CIFAR-10: cifar-10-batches-py pickles or train/test image folders"),
    "cifar100": DatasetSpec("cifar100", _cifar100_reader(coarse=False), 32, (0.507, 0.487, 0.441),
                            (0.267, 0.256, 0.276), summary="CIFAR-100, 100 fine classes: cifar-100-python pickles"),
    "cifar100-20": DatasetSpec("cifar100-20", _cifar100_reader(coarse=True), 32, (0.507, 0.487, 0.441),
                               (0.267, 0.256, 0.276),
                               summary="CIFAR-100's images with its 20 coarse superclass labels (grain)"),
    "stl10": DatasetSpec("stl10", read_stl10, 96, (0.447, 0.440, 0.407), (0.260, 0.257, 0.271),
                         summary="STL-10 binary distribution, 96x96; pretraining reads the 100k unlabeled",
                         pretrain_split="unlabeled"),
    "tiny-imagenet": DatasetSpec("tiny-imagenet", read_tiny_imagenet, 64, (0.480, 0.448, 0.398),
                                 (0.277, 0.269, 0.282),
                                 summary="tiny-imagenet-200 as distributed (val/ with val_annotations.txt), 64x64"),
    "slimagenet": DatasetSpec("slimagenet", read_slimagenet, 64, None, None,
                              summary="SlimageNet64 image folders train/ val/ test/, 64x64"),
    "imagefolder": DatasetSpec("imagefolder", read_imagefolder, None, None, None,
                               summary="any train/<class>/*, test/<class>/* image tree (--storage jpeg: any "
                                       "size, streamed)", lister=list_imagefolder),
    "imagenet": DatasetSpec("imagenet", read_listed(list_imagenet, None), 224, IMAGENET_MEAN, IMAGENET_STD,
                            summary="ILSVRC-2012: train/<wnid>/, labelled val/ as the test split; JPEG, 224 px views",
                            lister=list_imagenet, storage="jpeg"),
    "imagenet100": DatasetSpec("imagenet100", read_listed(list_imagenet, list(imagenet100_classes())), 224,
                               IMAGENET_MEAN, IMAGENET_STD, lister=list_imagenet, storage="jpeg",
                               classes=imagenet100_classes(),
                               summary="ImageNet-100 (CMC's 100 classes) from an ILSVRC-2012 tree; JPEG, 224 px"),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
