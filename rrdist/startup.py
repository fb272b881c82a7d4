"""Marks of a start's phases, for bench/startup.py: when a trial is launched, enters its function and
fits its trainer; when a worker enters its loop, has its model, its loaders and its monitors, draws
its first batch and ends its first step.

Off unless $RRDIST_STARTUP_LOG names a file; then each mark appends one JSON line to it (a line
under the pipe buffer is written whole, so processes can share the file). Each line carries the
process's own start time, so a phase's cost includes the process start it waited for.
"""

from __future__ import annotations

import json
import os
import time

LOG = "RRDIST_STARTUP_LOG"
_ON = bool(os.environ.get(LOG))  # read once: `once` runs at every training step
_done: set[str] = set()


def mark(phase: str, **facts) -> None:
    path = os.environ.get(LOG)
    if not path:
        return
    import psutil

    line = {"phase": phase, "t": time.time(), "pid": os.getpid(), "process_start": psutil.Process().create_time(),
            **facts}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def start(phase: str, **facts) -> None:
    """The mark of a start of a worker's loop: the marks made once (`once`) count from here."""
    _done.clear()
    mark(phase, **facts)


def once(phase: str, **facts) -> None:
    """A mark made only the first time since `start` (the first batch, the first step)."""
    if _ON and phase not in _done:
        _done.add(phase)
        mark(phase, **facts)
