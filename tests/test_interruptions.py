"""Checkpoints inside an epoch, on real Ray Train with two workers in float64: a run killed, or told
to stop with SIGTERM, in the middle of an epoch continues at the step after its last checkpoint,
and its loss trace and logged figures are those of a run never stopped."""

import json

import pytest
import torch

from rrdist.methods import make_config
from rrdist.train.checkpoint import checkpoint_name
from rrdist.train.trainer import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
STEPS = 1437 // 64  # digits' training split in global batches of 64


def run(root, folder, monkeypatch, fault=None, **extra):
    """A 2-worker fp64 run of one epoch with every step's loss traced; returns (trace, metrics lines)."""
    monkeypatch.setenv("RRDIST_TRACE", str(folder / "trace"))
    if fault:
        monkeypatch.setenv("RRDIST_FAULT", fault)
    else:
        monkeypatch.delenv("RRDIST_FAULT", raising=False)
    cfg = make_config(dataset="digits", root=str(root), backbone="conv4", K=2, batch_size=64, epochs=1, workers=2,
                      precision="fp64", online_probe=True, max_failures=2, out=str(folder / "run"), **extra)
    pretrain(cfg, log=lambda *a: None)
    ranks = [json.loads((folder / "trace" / f"epoch1-rank{r}.json").read_text()) for r in (0, 1)]
    trace = {a["step"]: ((a["loss"] + b["loss"]) / 2, a["views"] + b["views"]) for a, b in zip(*ranks)}
    logged = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    return trace, logged  # epoch lines and restart events ("event")


@pytest.fixture(scope="module")
def straight(digits_root, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run(digits_root, tmp_path_factory.mktemp("straight"), monkeypatch)


def same_run(resumed, straight, first):
    trace, logged = resumed
    reference, reference_logged = straight
    assert sorted(reference) == list(range(STEPS))
    assert sorted(trace) == list(range(first, STEPS))  # continued at the step after the checkpoint
    for step, (loss, views) in trace.items():
        assert views == reference[step][1], step  # the same images and views, bit for bit
        assert abs(loss - reference[step][0]) <= 1e-12 * abs(reference[step][0]), step
    (line,), (want,) = [m for m in logged if "event" not in m], reference_logged
    for key in ("loss", "pair_acc", "probe_acc", "steps"):  # the epoch's sums were restored, the probe too
        assert abs(line[key] - want[key]) <= 1e-12 * abs(want[key]), key


def test_a_worker_killed_inside_an_epoch_redoes_only_the_steps_since_the_last_checkpoint(
        digits_root, tmp_path, monkeypatch, straight):
    # A checkpoint at every check (every 5 steps): the kill at step 13 loses steps 10-12 only.
    resumed = run(digits_root, tmp_path, monkeypatch, fault="kill-worker:1:1:13", checkpoint_minutes=1e-6,
                  check_every=5)
    assert (tmp_path / "run" / ".fault-kill-worker").is_file()
    same_run(resumed, straight, first=10)
    (event,) = [m for m in resumed[1] if "event" in m]  # the restart, logged: steps 10-12 done twice
    assert (event["event"], event["workers_before"], event["workers"]) == ("restart", 2, 2)
    assert (event["epoch"], event["step"], event["steps_redone"]) == (0, 10, 3) and event["stalled_s"] > 0


def test_sigterm_to_one_worker_saves_a_checkpoint_there_and_the_run_continues(digits_root, tmp_path, monkeypatch,
                                                                             straight):
    # No timed checkpoints: the only one inside the epoch is the one SIGTERM asked for, at the next check.
    resumed = run(digits_root, tmp_path, monkeypatch, fault="sigterm-worker:1:1:12", checkpoint_minutes=0,
                  check_every=5)
    assert "got sigterm-worker" in (tmp_path / "run" / ".fault-kill-worker").read_text()
    saved = {p.name for p in (tmp_path / "run" / "train").iterdir()}
    assert checkpoint_name(0, set(), step=15) in saved, saved
    state = torch.load(tmp_path / "run" / "train" / "epoch_0000_step_000015" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 15) and state["monitors"]["probe"]["sums"][1] > 0
    same_run(resumed, straight, first=15)
    assert not [m for m in resumed[1] if "event" in m]  # the stop lost nothing: no step was redone


def test_checkpoint_names_sort_in_training_order():
    names = [checkpoint_name(1, set()), checkpoint_name(1, set(), step=5), checkpoint_name(1, set(), step=40),
             checkpoint_name(2, set()), checkpoint_name(2, {"epoch_0002"}), checkpoint_name(2, set(), step=3)]
    assert names == ["epoch_0001", "epoch_0001_step_000005", "epoch_0001_step_000040", "epoch_0002",
                     "epoch_0002-2", "epoch_0002_step_000003"]
    assert sorted(names) == names
