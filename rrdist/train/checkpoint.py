"""Training state in and out of checkpoints, and the run folder's final backbone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from rrdist import atomic
from rrdist.errors import DataError

STATE_FILE = "state.pt"
BACKBONE_FILE = "backbone.pt"


def save_state(directory: Path, method: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
               config: dict[str, Any]) -> Path:
    """Everything needed to continue: backbone, head, optimizer, completed epochs, config."""
    path = Path(directory) / STATE_FILE
    atomic.torch_save({"method": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                       "config": config}, path)
    return path


def load_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to fall back "
                        f"to the previous one") from None


def state_from_bytes(data: bytes, where: str) -> dict[str, Any]:
    """A checkpoint read from a run folder at a URI (or a path): the same checks as `load_state`."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"checkpoint {where}/{STATE_FILE} is unreadable ({type(e).__name__}): delete it to "
                        f"fall back to the previous one") from None


def save_backbone(run_dir: Path, backbone: torch.nn.Module, config: dict[str, Any], epoch: int) -> Path:
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
