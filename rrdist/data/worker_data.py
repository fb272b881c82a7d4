"""What every training worker is told about its data: built once by the driver from the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WorkerData:
    train: str  # the .beton pretraining reads (STL-10: its unlabeled images)
    labelled: str  # the labelled training split (methods using labels, the kNN monitor's bank)
    test: str | None  # the held-out split, where the dataset has one
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    dataset: str
    root: str  # absolute: workers run in Ray's session folder
    uri: str = ""  # a shared copy of the prepared data each node stages into `root` first
    eval_crop: float = 1.0  # images of any size: the centre crop evaluation reads (of the shorter side)

    def decoding(self) -> dict:
        """`image_loader`'s view_size and eval_crop."""
        return {"view_size": self.image_size, "eval_crop": self.eval_crop}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], dataset: str, root: str | Path, uri: str = "") -> "WorkerData":
        from rrdist.data.beton import split_path

        splits = manifest["splits"]
        return cls(train=str(split_path(manifest, manifest.get("pretrain_split", "train"))),
                   labelled=str(split_path(manifest, "train")),
                   test=str(split_path(manifest, "test")) if "test" in splits else None,
                   image_size=int(manifest["image_size"]), mean=tuple(manifest["mean"]), std=tuple(manifest["std"]),
                   num_classes=int(manifest["num_classes"]), dataset=dataset, root=str(Path(root).resolve()),
                   uri=uri or "", eval_crop=float(manifest.get("eval_crop", 1.0)))
