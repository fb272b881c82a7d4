"""Training state in and out of checkpoints (the final backbone file: rrdist.models.backbone_file)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from rrdist import atomic
from rrdist.errors import DataError

STATE_FILE = "state.pt"


def save_state(directory: Path, method: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
               config: dict[str, Any], monitors: dict[str, dict[str, Any]] | None = None) -> Path:
    """Everything needed to continue: backbone, head, optimizer, completed epochs, config, monitors' states."""
    path = Path(directory) / STATE_FILE
    atomic.torch_save({"method": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                       "config": config, "monitors": monitors or {}}, path)
    return path


def checkpoint_name(epoch: int, taken: set[str]) -> str:
    """The folder name of epoch `epoch`'s checkpoint: epoch_NNNN, or epoch_NNNN-K when a folder of
    that name is already there (an epoch trained again after a fall-back past a broken checkpoint:
    reusing the name would let Ray's pruning of the old entry delete the new folder). Names sort
    in the order they were written, as resume_state expects."""
    name = f"epoch_{epoch:04d}"
    again = 1
    while (f"{name}-{again}" if again > 1 else name) in taken:
        again += 1
    return f"{name}-{again}" if again > 1 else name


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
