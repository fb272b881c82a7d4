"""The TorchTrainer a run fits: Ray Train's, less the Ray Data actor that a run without Ray Datasets
does not use.

Ray Train starts a `DatasetManager` actor, and sends each worker Ray Data's context, at every start
of a worker group, whether or not the trainer was given datasets. rrdist's workers read FFCV files,
never a Ray Dataset, so that actor was one more process importing Ray Data at every start and
every restart, on the CPUs the workers were starting on. Everything else is Ray Train's own.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback


class FFCVTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
