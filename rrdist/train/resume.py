"""Where a (re)started worker continues from: Ray's checkpoint, or the run folder's newest readable one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrdist import kept
from rrdist.errors import MARKER, TrainingError
from rrdist.storage import RunFolder


def _snapshot_folders(snapshot: dict[str, Any], run) -> None:
    """Every checkpoint the snapshot names is in train/ (Ray refuses to start otherwise)."""
    have = set(run.subfolders("train"))
    missing = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"] if r["checkpoint_dir_name"] not in have]
    if missing:
        raise ValueError(f"it names the checkpoint train/{missing[0]}, which is not there")


def _ray_snapshot(data: bytes) -> dict[str, Any]:
    from importlib.metadata import version

    snapshot = kept.json_of(data, {"ray_version": str, "checkpoint_results": [{"checkpoint_dir_name": str,
                                                                                "metrics": dict}]})
    if snapshot["ray_version"] != version("ray"):
        raise ValueError(f"written by Ray {snapshot['ray_version']}, this is Ray {version('ray')}")
    return snapshot


# Ray Train's list of the run's checkpoints, read by Ray itself when the run starts again.
RAY_SNAPSHOT = kept.Kept("train/checkpoint_manager_snapshot.json", _ray_snapshot,
                         "restore it, or remove it: the run then resumes from the newest readable checkpoint in "
                         "train/", agrees=_snapshot_folders)


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
