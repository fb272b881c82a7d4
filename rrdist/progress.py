"""Progress of long work: a bar redrawn in place on a terminal, a plain line every tenth in a log.

A submitted job's log (or a Ray worker's, which is never a terminal) gets at most ten lines per
loop, and none for a loop shorter than `quiet_s` seconds, so logs never fill with redraws.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, title: str, total: int, stream: TextIO | None = None, quiet_s: float = 10.0,
                 unit: str = "steps") -> None:
        self.title, self.total, self.unit, self.quiet_s = title, max(int(total), 1), unit, quiet_s
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_tenth, self.last_draw, self.drawn = 0, 0.0, False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def due(self, done: int) -> bool:
        """Whether `update(done)` would show something: callers compute costly figures only then."""
        elapsed = time.perf_counter() - self.start
        if self.tty:
            return elapsed - self.last_draw >= 0.2 or done >= self.total
        return elapsed >= self.quiet_s and done * 10 // self.total > self.last_tenth

    def update(self, done: int, **figures: float | str) -> None:
        if not self.due(done):
            return
        elapsed = time.perf_counter() - self.start
        rate = done / max(elapsed, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        shown = "  ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in figures.items())
        text = (f"{self.title} {100 * done // self.total:3d}% {done}/{self.total} {self.unit}  "
                f"{rate:.3g} {self.unit}/s  {shown}  ETA {clock(eta)}")
        if self.tty:
            filled = 20 * done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (20 - filled)}] {text}\033[K")
            self.last_draw, self.drawn = elapsed, True
        else:
            self.stream.write(text + "\n")
            self.last_tenth = done * 10 // self.total
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
