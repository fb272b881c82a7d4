"""Real Ray Train fits with 2 CPU workers on the digits data: checkpoints, TensorBoard, resume, NaN."""

import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rrdist.methods import config_from_yaml, make_config
from rrdist.errors import ConfigError, TrainingError
from rrdist.eval.linear import LinearSettings, evaluate_linear
from rrdist.train.trainer import pretrain

pytestmark = pytest.mark.usefixtures("ray_session")
QUIET = dict(log=lambda *a: None)


def actor_classes(exclude_ids=frozenset()):
    """Every actor the shared Ray session has started, by id, less those given."""
    import ray
    from ray.util.state import list_actors

    # By the session's own address: other tests' Ray clusters may be running beside it.
    session = ray.get_runtime_context().gcs_address
    return {a.actor_id: a.class_name for a in list_actors(session, limit=10_000, raise_on_missing_output=False)
            if a.actor_id not in exclude_ids}


@pytest.fixture(scope="module")
def actors_before_run():
    """The actors other tests' fits left in the shared session, so a test sees only this module's run's."""
    return frozenset(actor_classes())


@pytest.fixture(scope="module")
def run(digits_root, tmp_path_factory, actors_before_run):
    out = tmp_path_factory.mktemp("runs") / "digits-conv4-k3"
    cfg = make_config(dataset="digits", root=str(digits_root), backbone="conv4", K=3, batch_size=32,
                         epochs=2, workers=2, checkpoint_every=1, knn_every=2, out=str(out))
    result = pretrain(cfg, **QUIET)
    return cfg, result


def scalars(run_dir, tag):
    steps = {}
    for f in sorted((run_dir / "tb").iterdir()):
        acc = EventAccumulator(str(f))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps.update({e.step: e.value for e in acc.Scalars(tag)})
    return steps


def epochs_logged(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["epoch"] for m in lines if "event" not in m]  # restart events are lines of their own


def test_fit_writes_checkpoints_events_and_backbone(run):
    cfg, result = run
    run_dir = result.run_dir
    assert not result.resumed
    assert result.metrics["epoch"] == 2 and result.metrics["steps"] > 0
    assert 0.0 <= result.metrics["pair_acc"] <= 1.0
    # optimizer steps: 1437 training images in global batches of 32 (16 per worker), the last partial one dropped
    assert result.metrics["steps"] == 1437 // 32
    checkpoints = sorted(p.name for p in (run_dir / "train").glob("epoch_*"))
    assert checkpoints == ["epoch_0001", "epoch_0002"]
    state = torch.load(run_dir / "train" / "epoch_0002" / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["K"] == 3
    assert {"method", "optimizer"} <= set(state)
    assert any(k.startswith("backbone.") for k in state["method"]) and any(k.startswith("head.") for k in state["method"])
    saved = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert saved["epoch"] == 2
    assert config_from_yaml(run_dir / "config.yaml") == cfg
    loss = scalars(run_dir, "pretrain/loss")
    assert sorted(loss) == [1, 2] and all(v > 0 for v in loss.values())
    # the kNN monitor ran at epoch 2 only (every 2 epochs), over both workers' shares
    assert sorted(scalars(run_dir, "pretrain/knn_acc")) == [2] and 0.2 < result.metrics["knn_acc"] <= 1.0
    assert sorted(scalars(run_dir, "pretrain/views_per_s")) == [1, 2]
    assert epochs_logged(run_dir) == [1, 2]


def test_tensorboard_shows_training_images_with_their_views(run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg, result = run
    pictures = [v for f in (result.run_dir / "tb").iterdir() for e in EventFileLoader(str(f)).Load()
                for v in e.summary.value if v.tag == "pretrain/views"]
    assert len(pictures) == 1
    width, height = (int(x) for x in pictures[0].tensor.string_val[:2])
    # 8 images per row: the image, then its K = 3 views, 32-pixel tiles with 2-pixel padding
    assert (width, height) == (2 + 4 * 34, 2 + 8 * 34)


def test_rerun_resumes_from_the_last_checkpoint(run):
    cfg, first = run
    longer = make_config(**{**cfg.to_dict(), "epochs": 3})
    result = pretrain(longer, **QUIET)
    assert result.resumed and result.metrics["epoch"] == 3
    assert epochs_logged(first.run_dir) == [1, 2, 3]  # epochs 1-2 were not run again
    state = torch.load(first.run_dir / "train" / "epoch_0003" / "state.pt", weights_only=True)
    assert state["epoch"] == 3
    assert sorted(scalars(first.run_dir, "pretrain/loss")) == [1, 2, 3]


def test_linear_evaluation_on_cached_features(run):
    _, result = run
    settings = LinearSettings(epochs=20)
    first = evaluate_linear(result.run_dir, settings=settings, **QUIET)
    assert not first["features_cached"]
    cache = sorted(p.name for p in (result.run_dir / "features").iterdir())
    assert len(cache) == 2
    again = evaluate_linear(result.run_dir, settings=settings, **QUIET)
    assert again["features_cached"]
    assert again["test_accuracy"] == first["test_accuracy"]
    assert sorted(p.name for p in (result.run_dir / "features").iterdir()) == cache
    assert first["n_test"] == 360 and first["feature_dim"] == 64
    assert first["test_accuracy"] > 0.15  # ten classes: clearly above chance (0.1)
    saved = json.loads((result.run_dir / "eval" / "linear-trained-digits.json").read_text())
    assert saved["test_accuracy"] == first["test_accuracy"] and saved["settings"]["epochs"] == 20
    random = evaluate_linear(result.run_dir, init="random", settings=settings, **QUIET)
    assert random["init"] == "random" and len(list((result.run_dir / "features").iterdir())) == 4
    assert scalars(result.run_dir, "eval/linear_trained_digits") == {3: pytest.approx(first["test_accuracy"])}


def test_nan_loss_stops_with_one_line_and_keeps_checkpoints(run, monkeypatch):
    cfg, result = run
    before = sorted(p.name for p in (result.run_dir / "train").glob("epoch_*"))
    backbone = (result.run_dir / "backbone.pt").read_bytes()
    monkeypatch.setenv("RRDIST_FAULT", "nan-loss")
    with pytest.raises(TrainingError) as err:
        pretrain(make_config(**{**cfg.to_dict(), "epochs": 5}), **QUIET)
    message = str(err.value)
    assert "NaN" in message and "--lr" in message and "\n" not in message
    assert sorted(p.name for p in (result.run_dir / "train").glob("epoch_*")) == before
    assert (result.run_dir / "backbone.pt").read_bytes() == backbone


def test_run_folder_with_other_settings_is_refused(run):
    cfg, result = run
    with pytest.raises(ConfigError, match="new --out folder"):
        pretrain(make_config(**{**cfg.to_dict(), "gamma": 0.0}), **QUIET)
    assert os.path.exists(result.run_dir / "backbone.pt")


def test_a_run_starts_ray_trains_actors_but_no_ray_data_actor(run, actors_before_run):
    """rrdist's workers read FFCV files: Ray Train's DatasetManager, a process of its own at every
    worker-group start, is not started (rrdist/train/ray_trainer.py); Ray Train's own actors are."""
    started = set(actor_classes(exclude_ids=actors_before_run).values())
    assert {"TrainController", "RayTrainWorker", "SynchronizationActor"} <= started
    assert "DatasetManager" not in started


def test_every_process_of_the_job_gets_rrdists_ray_settings_unless_the_caller_set_them():
    import ray

    from rrdist.train.trainer import POLL, QUIET_RAY, job_runtime_env

    assert job_runtime_env({})["env_vars"] == QUIET_RAY
    assert float(QUIET_RAY[POLL]) < 2.0  # Ray Train's own default is 2 s
    assert job_runtime_env({POLL: "3"})["env_vars"][POLL] == "3"  # the caller's own, kept
    seen = ray.get(ray.remote(lambda: os.environ.get(POLL)).remote())  # a process of this session's job
    assert seen == os.environ.get(POLL, QUIET_RAY[POLL])
