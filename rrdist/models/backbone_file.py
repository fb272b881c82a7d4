"""The backbone file of a run folder: what pretraining leaves and every evaluation reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rrdist import atomic
from rrdist.errors import DataError

BACKBONE_FILE = "backbone.pt"


def save_backbone(run_dir: Path, backbone: torch.nn.Module, config: dict[str, Any], epoch: int,
                  inputs: dict[str, Any] | None = None) -> Path:
    """{backbone: state dict, config: the run's settings, epoch: epochs trained, input: what the network's
    inputs are (size, mean, std: `input_spec`)}, written atomically."""
    path = Path(run_dir) / BACKBONE_FILE
    saved = {"backbone": backbone.state_dict(), "config": config, "epoch": epoch}
    if inputs is not None:
        saved["input"] = inputs
    atomic.torch_save(saved, path)
    return path


def input_spec(size: int, mean, std) -> dict[str, Any]:
    """The inputs a backbone was trained on, as torchvision's weights describe theirs: RGB images resized
    to size x size, scaled to [0, 1], then normalised by the per-channel mean and std."""
    return {"size": int(size), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def load_backbone_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: finish the pretraining with `rrdist pretrain` first") from None
    except Exception as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}): run the pretraining again") from None
