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
    """The training state to continue from: the newest readable checkpoint of the run.

    Ray's latest checkpoint, unless the run folder holds a newer readable one: a worker that died
    right after its report, before the controller registered it, has still written it whole (the
    state file is written atomically), and continuing from it redoes fewer steps. When Ray's is
    unreadable (a truncated file), or Ray offers none although the run folder holds some, the
    newest readable one there, said in one line. The run folder only ever holds checkpoints of
    this run (a folder with other settings is refused), and a run is exact, so each of them is
    a state of the same training.
    """
    from rrdist.errors import DataError
    from rrdist.train.checkpoint import load_state

    problem, ray_name, ray_state = None, None, None
    if checkpoint is not None:
        ray_name = Path(checkpoint.path).name
        try:
            with checkpoint.as_directory() as d:
                ray_state = load_state(Path(d))
        except DataError as e:
            problem = str(e).split(":")[0]
    # Names sort in the order of training (checkpoint.checkpoint_name).
    if ray_state is not None:
        found = _newest_readable(run, lambda name: name > ray_name)
        if found is None:
            return ray_state
        before, after = "", f" (newer than {ray_name}, the last one Ray registered)"
    else:
        found = _newest_readable(run, lambda name: name != ray_name)
        before, after = (f"{problem}; " if problem else ""), ""
    if found is not None:
        folder, state = found
        if announce:
            print(f"[rrdist] {before}resuming from the checkpoint {folder} in the run folder{after}")
        return state
    if problem:
        raise TrainingError(f"{MARKER}no readable checkpoint in {run}/train ({problem}): "
                            f"choose a new --out folder to start again")
    return None


def _newest_readable(run: RunFolder, wanted) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint folder of train/ whose name `wanted` accepts and whose state reads."""
    from rrdist.errors import DataError
    from rrdist.train.checkpoint import STATE_FILE, state_from_bytes

    for folder in reversed(run.subfolders("train")):
        if not folder.startswith("epoch_") or not wanted(folder):
            continue
        data = run.read_bytes(f"train/{folder}/{STATE_FILE}")
        try:
            state = state_from_bytes(data, f"{run}/train/{folder}") if data is not None else None
        except DataError:
            continue
        if state is not None:
            return folder, state
    return None
