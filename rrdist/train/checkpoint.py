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
               config: dict[str, Any], monitors: dict[str, dict[str, Any]] | None = None, step: int = 0,
               sums: torch.Tensor | None = None, workers: int = 1) -> Path:
    """Everything needed to continue at the next step: the method (backbone, head, its own state),
    optimizer, completed epochs, config, monitors' states, and inside an epoch the steps done in it
    and its running sums; and the worker count that wrote it (a restart on another count is a resize)."""
    path = Path(directory) / STATE_FILE
    atomic.torch_save({"method": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                       "config": config, "monitors": monitors or {}, "step": step,
                       "sums": sums.detach().cpu().clone() if sums is not None else None, "workers": workers}, path)
    return path


def checkpoint_name(epoch: int, taken: set[str], step: int = 0) -> str:
    """The folder name of a checkpoint after `epoch` completed epochs (and `step` steps of the next):
    epoch_NNNN (epoch_NNNN_step_SSSSSS), or with -K when a folder of that name is already there (an
    epoch trained again after a fall-back past a broken checkpoint: reusing the name would let Ray's
    pruning of the old entry delete the new folder). Names sort in the order of training, as
    resume_state expects."""
    name = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "")
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
