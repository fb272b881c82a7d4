"""Where a (re)started worker continues from: Ray's checkpoint, or the run folder's newest readable one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrdist.errors import MARKER, TrainingError
from rrdist.storage import RunFolder


def resume_state(checkpoint, run: RunFolder, announce: bool = False) -> dict[str, Any] | None:
    """The training state to continue from.

    Ray's latest checkpoint first. When it is unreadable (a truncated file), or when Ray offers
    none although the run folder holds some (a worker died before the controller registered the
    last report), the newest readable checkpoint in the run folder, said in one line. The run
    folder only ever holds this run's checkpoints: a folder with other settings is refused.
    """
    from rrdist.errors import DataError
    from rrdist.train.checkpoint import STATE_FILE, load_state, state_from_bytes

    problem, newer_than = None, None
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as d:
                return load_state(Path(d))
        except DataError as e:
            problem, newer_than = str(e).split(":")[0], Path(checkpoint.path).name
    for folder in reversed(run.subfolders("train")):
        if not folder.startswith("epoch_") or (newer_than is not None and folder >= newer_than):
            continue
        data = run.read_bytes(f"train/{folder}/{STATE_FILE}")
        try:
            state = state_from_bytes(data, f"{run}/train/{folder}") if data is not None else None
        except DataError:
            continue
        if state is None:
            continue
        if announce:
            why = f"{problem}; " if problem else ""
            print(f"[rrdist] {why}resuming from the checkpoint {folder} in the run folder")
        return state
    if problem:
        raise TrainingError(f"{MARKER}no readable checkpoint in {run}/train ({problem}): "
                            f"choose a new --out folder to start again")
    return None
