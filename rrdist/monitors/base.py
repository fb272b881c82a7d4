"""What a monitor is: an object that watches a pretraining without changing it, and gives figures.

The worker loop shows a monitor every step (`after_step`), asks it for its figures at the end of
every epoch (`epoch_end`, on every worker: a monitor may use collectives there, and every worker
must return the same figures), and saves and restores its state with each checkpoint.

A monitor never changes what is learned: it sends no gradient into the backbone and draws from no
random stream the training uses (its settings may therefore change when a run is resumed).

A new monitor is one file: a `Settings` dataclass (its flags, defaults, help and checks, with
`enabled` saying whether a run uses it), a `Monitor` subclass naming its `figures` (what a sweep's
scheduler may act on), and one line in the registry (`rrdist/monitors/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rrdist.data.worker_data import WorkerData


@dataclass
class MonitorSettings:
    """A monitor's own settings: flags of `rrdist pretrain`, keys of config files and search spaces."""

    def enabled(self) -> bool:
        """Whether a run with these settings uses the monitor."""
        return False

    def validate(self, run) -> None:
        """Refuse bad values with a one-line ConfigError that names the fix (`run`: the PretrainConfig)."""

    def check_data(self, data: WorkerData) -> None:
        """Refuse, before anything starts, data the monitor cannot watch (raise a ConfigError)."""


@dataclass
class MonitorContext:
    """What a monitor may read: the backbone being trained and the run's data, device, seed and length."""
    backbone: torch.nn.Module
    data: WorkerData
    device: torch.device
    seed: int
    epochs: int


class Monitor:
    Settings: ClassVar[type] = MonitorSettings
    figures: ClassVar[tuple[str, ...]] = ()  # the names `epoch_end` may give

    def __init__(self, settings: Any, context: MonitorContext) -> None:
        self.settings, self.context = settings, context

    def after_step(self, batch) -> None:
        """Called after every optimizer step with the step's `rrdist.train.batches.Batch`."""

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """The figures of epoch `epoch` (counted from 1), on every worker alike; {} when it has none due."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run continues the monitor as it was. Called on
        every worker at the same step, and only rank 0's is saved: combine there what each worker
        holds alone (its share of running sums; a collective is allowed), and in `load_state_dict`
        give it back to one worker."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
