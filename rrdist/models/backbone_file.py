"""The backbone file of a run folder: what pretraining leaves and every evaluation reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rrdist import atomic
from rrdist.errors import DataError

BACKBONE_FILE = "backbone.pt"


def save_backbone(run_dir: Path, backbone: torch.nn.Module, config: dict[str, Any], epoch: int) -> Path:
    """{backbone: state dict, config: the run's settings, epoch: epochs trained}, written atomically."""
    path = Path(run_dir) / BACKBONE_FILE
    atomic.torch_save({"backbone": backbone.state_dict(), "config": config, "epoch": epoch}, path)
    return path


def load_backbone_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: finish the pretraining with `rrdist pretrain` first") from None
    except Exception as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}): run the pretraining again") from None
