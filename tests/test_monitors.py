"""Monitors plug in: one object and one registry line, and its figure reaches metrics.jsonl,
TensorBoard, the checkpoint and a sweep's scheduler, with no other file changed."""

import json
from dataclasses import dataclass

import pytest
import torch
import yaml

from rrdist.config import setting
from rrdist.errors import ConfigError
from rrdist.monitors import MONITORS, register
from rrdist.monitors.base import Monitor, MonitorSettings
from rrdist.tune.space import epoch_metric_names, parse


def toy_monitor():
    """A monitor written here, as a user would: it counts the images its worker has trained on."""

    @dataclass
    class ImageCountSettings(MonitorSettings):
        count_images: bool = setting(False, "count the training images seen")
        count_scale: float = setting(1.0, "a factor on the count")

        def enabled(self):
            return self.count_images

    class ImageCounter(Monitor):
        Settings = ImageCountSettings
        figures = ("images_seen",)

        def __init__(self, settings, context):
            super().__init__(settings, context)
            self.seen = 0

        def after_step(self, batch):
            self.seen += batch.labels.shape[0]

        def epoch_end(self, epoch):
            return {"images_seen": self.settings.count_scale * self.seen}

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = state["seen"]

    return ImageCounter


@pytest.fixture
def registered_toy():
    register("image_count", toy_monitor())
    yield MONITORS["image_count"]
    del MONITORS["image_count"]


def space(**scheduler):
    return {"name": "toy", "fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 2, "batch_size": 64, "K": 2,
                                     "count_images": True, "count_scale": 0.5},
            "seeds": 1, "trial": {"workers": 1, "cpus_per_worker": 1}, "evaluations": {},
            "scheduler": {"asha": {"metric": "images_seen", "mode": "max", "grace_period": 1, **scheduler}}}


def test_the_scheduler_metrics_come_from_the_registries(registered_toy):
    assert "images_seen" in epoch_metric_names() and "knn_acc" in epoch_metric_names()
    assert parse(space(), source="toy.yaml").scheduler_settings["metric"] == "images_seen"


def test_an_unregistered_monitors_figure_and_settings_are_refused():
    assert "images_seen" not in epoch_metric_names()
    with pytest.raises(ConfigError, match="count_images"):
        parse(space(), source="toy.yaml")


def test_a_monitor_setting_clash_is_refused(registered_toy):
    with pytest.raises(ValueError, match="count_images"):
        register("another", toy_monitor())


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_a_monitor_added_in_a_test_reports_to_the_log_the_checkpoint_and_the_scheduler(tmp_path, digits_root,
                                                                                       registered_toy):
    from rrdist.tune.driver import run_sweep

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(space()))
    sweep_dir = run_sweep(path, root=str(digits_root), out=tmp_path / "sweeps", log=lambda *a: None)
    (record,) = [json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*/trial.json")]
    assert record["status"] == "completed", record.get("error")
    per_epoch = (1437 // 64) * 64  # the digits training split, whole batches of 64
    run = sweep_dir / "trials" / record["trial"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["images_seen"] for m in logged] == [0.5 * per_epoch, 0.5 * 2 * per_epoch]
    assert record["metrics"]["images_seen"] == 0.5 * 2 * per_epoch  # what the trial reported to Tune
    state = torch.load(run / "train" / "epoch_0002" / "state.pt", weights_only=True)
    assert state["monitors"] == {"image_count": {"seen": 2 * per_epoch}}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("pretrain/images_seen")] == [0.5 * per_epoch, per_epoch]
