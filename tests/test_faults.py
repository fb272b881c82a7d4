"""Surviving failures: a worker killed mid-epoch, a truncated checkpoint, the driver killed."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rrdist.methods import make_config
from rrdist.train.trainer import pretrain

pytestmark = pytest.mark.usefixtures("ray_session")
QUIET = dict(log=lambda *a: None)


def config(root, out, **kw):
    # One worker: what N workers do through a failure is in tests/test_interruptions.py and
    # tests/test_global_batch.py; here, what a failure does to the run folder.
    base = dict(dataset="digits", root=str(root), backbone="conv4", K=2, batch_size=64, epochs=3, workers=1,
                checkpoint_every=1, out=str(out))
    return make_config(**{**base, **kw})


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged_epochs(run_dir):
    """The epochs of metrics.jsonl's epoch lines (restart events are lines of their own)."""
    return [m["epoch"] for m in logged(run_dir) if "event" not in m]


def final_state(run_dir, epoch):
    return torch.load(run_dir / "train" / f"epoch_{epoch:04d}" / "state.pt", weights_only=True)


def test_worker_killed_mid_epoch_redoes_the_epoch(digits_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RRDIST_FAULT", "kill-worker:0:2:3")  # the worker kills itself in epoch 2, step 3
    result = pretrain(config(digits_root, tmp_path / "run", max_failures=2), **QUIET)
    run_dir = result.run_dir
    assert (run_dir / ".fault-kill-worker").is_file()  # the failure really happened
    assert result.metrics["epoch"] == 3
    assert final_state(run_dir, 3)["epoch"] == 3
    # epoch 2 was interrupted before it was logged, redone from the epoch-1 checkpoint, logged once
    assert logged_epochs(run_dir) == [1, 2, 3]
    (event,) = [m for m in logged(run_dir) if "event" in m]  # the restart, with the 3 steps it redid
    assert (event["event"], event["epoch"], event["step"], event["steps_redone"]) == ("restart", 1, 0, 3)
    assert torch.load(run_dir / "backbone.pt", weights_only=True)["epoch"] == 3


def test_truncated_checkpoint_falls_back_to_the_previous_one(digits_root, tmp_path):
    cfg = config(digits_root, tmp_path / "run", epochs=2)
    run_dir = pretrain(cfg, **QUIET).run_dir
    state = run_dir / "train" / "epoch_0002" / "state.pt"
    state.write_bytes(state.read_bytes()[:500])
    result = pretrain(config(digits_root, tmp_path / "run", epochs=3), **QUIET)
    assert result.metrics["epoch"] == 3
    # epoch 2 is redone from epoch 1's checkpoint; its first log line goes with the broken checkpoint
    assert logged_epochs(run_dir) == [1, 2, 3]
    assert [m["steps_redone"] for m in logged(run_dir) if "event" in m] == [1437 // 64]  # all of epoch 2
    assert final_state(run_dir, 3)["epoch"] == 3
    # The redone epoch's checkpoint has a name of its own, so pruning the broken one (Ray keeps two)
    # did not delete it: the two newest good checkpoints are there.
    kept = {d.name: torch.load(d / "state.pt", weights_only=True)["epoch"] for d in (run_dir / "train").iterdir()
            if d.name.startswith("epoch_")}
    assert kept == {"epoch_0002-2": 2, "epoch_0003": 3}


def test_no_readable_checkpoint_stops_at_once_in_one_line(digits_root, tmp_path):
    """Every checkpoint broken: the workers say so and end (no restart could read one either); the
    driver raises the one line, and the broken files are left for the user to look at."""
    from rrdist.errors import TrainingError
    from rrdist.train.epoch_log import FAILURE_FILE

    run_dir = pretrain(config(digits_root, tmp_path / "run", epochs=1), **QUIET).run_dir
    state = run_dir / "train" / "epoch_0001" / "state.pt"
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="no readable checkpoint") as raised:
        pretrain(config(digits_root, tmp_path / "run", epochs=2, max_failures=3), **QUIET)
    assert len(str(raised.value).splitlines()) == 1 and "new --out folder" in str(raised.value)
    # Written by the workers, which ended normally: Ray Train did not restart them three times.
    assert "no readable checkpoint" in json.loads((run_dir / FAILURE_FILE).read_text())["error"]
    assert state.read_bytes() == b"not a checkpoint" and logged_epochs(run_dir) == [1]


def test_killed_driver_resumes_with_the_same_command(digits_root, tmp_path):
    import ray

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rrdist", "pretrain", "--dataset", "digits", "--root", str(digits_root),
           "--K", "2", "--epochs", "4", "--workers", "1", "--checkpoint-every", "1", "--out", str(out),
           "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "train" / "epoch_0002" / "state.pt").exists():
        assert driver.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = max(logged_epochs(out))
    assert 2 <= done_before < 4
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from epoch" in again.stdout + again.stderr
    assert final_state(out, 4)["epoch"] == 4
    assert logged_epochs(out) == [1, 2, 3, 4]  # an epoch logged after the last checkpoint is logged once


def test_bf16_autocast_step_runs_on_cpu(digits_root):
    from rrdist.data.augment import KViewAugment
    from rrdist.data.beton import load_manifest, split_path
    from rrdist.data.loader import image_loader
    from rrdist.methods import build_method
    from rrdist.train.batches import ViewBatches
    from rrdist.train.step import EpochSums, TrainStep, train_epoch

    manifest = load_manifest("digits", digits_root)
    cfg = make_config(dataset="digits", K=2, batch_size=128, precision="bf16")
    method = build_method(cfg, 10)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    loader = image_loader(split_path(manifest, "test"), cfg.batch_size, train=True, indices=True)
    batches = ViewBatches(loader, KViewAugment(32, (0.5,) * 3, (0.25,) * 3), cfg.settings.K, cfg.seed,
                          torch.device("cpu"), precision="bf16")
    step = TrainStep(method, method.configure_optimizer(), precision="bf16")
    totals = train_epoch(step, batches.epoch(0), EpochSums(method.metric_names, torch.device("cpu"))).totals()
    assert totals["steps"] == 360 // 128 and math.isfinite(totals["loss"]) and totals["nonfinite"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters()))
