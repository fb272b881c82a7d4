"""What every evaluation checks before it starts, and where its result goes.

An evaluation's options are checked before anything is read or written. A result replaces an
earlier one only when both were made with the same settings: a result of other settings goes to
a file of its own, so no earlier result is lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rrdist import kept
from rrdist.errors import ConfigError


def evaluation_device(device: str | None) -> torch.device:
    """The device to evaluate on: `device` if it exists here, else the GPU when there is one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device} is not a device: pass cpu or cuda") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device} is not supported: pass cpu or cuda")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no GPU is visible here: pass --device cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s): pass --device cuda")
    return chosen


def at_least(values: dict[str, Any], low: dict[str, float]) -> None:
    """Each named option is a number >= its lowest value (a one-line ConfigError naming the flag)."""
    for name, least in low.items():
        value = values[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= least:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {least:g} (got {value!r})")


def positive(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {value!r}): pass e.g. --{name.replace('_', '-')} 1e-3")


def result_stem(run_dir: Path, stem: str, settings: dict[str, Any]) -> str:
    """The name (without extension) of an evaluation's files in <run>/eval: `stem`, unless a result of
    other settings already has it, or a damaged file that may be restored; then `stem-<digest of these
    settings>`, so that nothing there is overwritten."""
    path = Path(run_dir) / "eval" / f"{stem}.json"
    wanted = json.loads(json.dumps(settings))
    if not path.is_file():
        return stem
    try:
        saved = kept.json_of(path.read_bytes(), {"settings": dict})["settings"]
    except (OSError, ValueError):
        saved = None
    if saved == wanted:
        return stem
    return f"{stem}-{hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:8]}"
