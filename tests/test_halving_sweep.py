"""Synchronous halving on a real Ray Tune sweep: trials pause at the rung, a Ctrl-C while they wait
is resumed with the same decisions, and a trial paused and resumed is the trial run straight through."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rrdist.tune.halving import LEDGER


def ledger(sweep_dir: Path) -> dict:
    path = sweep_dir / LEDGER
    return yaml.safe_load(path.read_text()) if path.exists() else {"values": {}, "events": []}


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*/trial.json")}


def epoch_lines(run: Path) -> list[dict]:
    return [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "event" not in m]


def step_losses(trace: Path, epochs: int) -> dict[tuple[int, int], float]:
    """(epoch, step) -> that step's loss, as the run that finished each epoch traced it (a run resumed
    inside an epoch traces the steps from where it resumed)."""
    return {(e, s["step"]): s["loss"] for e in range(1, epochs + 1)
            for s in json.loads((trace / f"epoch{e}-rank0.json").read_text())}


def assert_no_step_past(run: Path, rung: int) -> None:
    """The run's last step is its rung epoch's last (rank 0's position line), and it holds no checkpoint
    inside the next epoch."""
    from rrdist.train.position import read_position

    position = read_position(run)
    assert position is not None and position["epoch"] == rung - 1, position  # epochs count from 0 there
    assert not list((run / "train").glob(f"epoch_{rung:04d}_step_*")), sorted((run / "train").iterdir())


@pytest.mark.usefixtures("ray_session")
def test_a_run_told_to_pause_ends_at_that_epoch_with_its_checkpoint(tmp_path, digits_root):
    """What a rung asks of a trial's Train run: end after the rung epoch and its checkpoint, before a
    step of the next epoch, whatever the epoch's length; run again, it continues from there."""
    from rrdist.methods import make_config
    from rrdist.train.trainer import RungReached, pretrain

    run = tmp_path / "run"
    cfg = make_config(dataset="digits", root=str(digits_root), K=2, epochs=3, batch_size=64, checkpoint_every=5,
                      check_every=1000, out=str(run))
    with pytest.raises(RungReached) as reached:
        pretrain(cfg, pause_epoch=1, log=lambda *a: None)
    assert reached.value.epoch == 1
    assert [m["epoch"] for m in epoch_lines(run)] == [1] and (run / "train" / "epoch_0001" / "state.pt").is_file()
    assert_no_step_past(run, rung=1)
    first = epoch_lines(run)[0]
    pretrain(cfg, pause_epoch=3, log=lambda *a: None)  # its last epoch: no pause there
    lines = epoch_lines(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3] and lines[0] == first


@pytest.mark.usefixtures("ray_session")
def test_paused_trials_survive_ctrl_c_and_resume_as_if_never_paused(tmp_path, digits_root, monkeypatch):
    import ray

    epochs = 2
    space = {"name": "halving", "fixed": {"dataset": "digits", "backbone": "conv4", "epochs": epochs, "batch_size": 64,
                                          "precision": "fp64"},
             "axes": {"K": {"grid": [2, 3, 4]}}, "seeds": 1, "trial": {"workers": 1, "cpus_per_worker": 1},
             "concurrency": 1, "evaluations": {"linear": {"epochs": 1}},
             "scheduler": {"hyperband": {"metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2}}}
    path = tmp_path / "halving.yaml"
    path.write_text(yaml.safe_dump(space))
    sweep_dir = tmp_path / "sweeps" / "halving"
    # The trace folder (one per trial) travels with the sweep's job to its trials' processes.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RRDIST_TRACE": str(tmp_path / "trace" / "{run}")}
    cmd = [sys.executable, "-m", "rrdist", "sweep", str(path), "--root", str(digits_root), "--out", str(tmp_path / "sweeps"),
           "--address", ray.get_runtime_context().gcs_address]

    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 400
            paused = []
            while time.time() < deadline and driver.poll() is None and len(paused) < 2:
                paused = [e["trial"] for e in ledger(sweep_dir)["events"] if e["event"] == "paused"]
                time.sleep(0.2)
            assert driver.poll() is None and len(paused) == 2, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1.0)  # the second pause is carried out (its process ended)
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C while two trials wait at the rung
            driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, (tmp_path / "first.log").read_text()[-3000:]
    before = ledger(sweep_dir)
    assert not any(e["event"] == "stopped" for e in before["events"])  # the rung was not full: nobody judged
    assert {t["status"] for t in records(sweep_dir).values()} == {"interrupted"}
    waited = {name: epoch_lines(sweep_dir / "trials" / name) for name in paused}
    assert all([m["epoch"] for m in lines] == [1] for lines in waited.values()), waited
    for name in paused:  # each ended at the rung by itself: not a step of epoch 2, however short the epochs
        assert_no_step_past(sweep_dir / "trials" / name, rung=1)

    again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    after = ledger(sweep_dir)
    for name in paused:  # the waiting trials kept their rung value; they were not trained again to get it
        assert after["values"][name][1] == before["values"][name][1]
        assert epoch_lines(sweep_dir / "trials" / name)[0] == waited[name][0]
    trials = records(sweep_dir)
    status = {name: t["status"] for name, t in trials.items()}
    assert sorted(status.values()) == ["completed", "completed", "stopped"], status
    # The decision is the rule's: the worst loss at epoch 1 is stopped there.
    worst = max(after["values"], key=lambda n: after["values"][n][1])
    assert status[worst] == "stopped" and trials[worst]["epoch"] == 1
    assert [m["epoch"] for m in epoch_lines(sweep_dir / "trials" / worst)] == [1]
    assert_no_step_past(sweep_dir / "trials" / worst, rung=1)
    resumed = [n for n in paused if status[n] == "completed"]
    assert resumed, "one of the two waiting trials is among the best two"

    table = (sweep_dir / "results.md").read_text()
    assert "## Trial fates (synchronous halving)" in table
    for name in resumed:
        assert f"| `{name}` |" in table and "paused at epoch 1; resumed; completed |" in table.split(f"`{name}`")[1].splitlines()[0]
    assert f"stopped at epoch 1 (loss {after['values'][worst][1]:.4g})" in table
    assert any((sweep_dir / "fates").rglob("events.out.tfevents.*"))

    # The same trial run straight through, here: the same loss at every step, the same weights.
    from rrdist.methods import config_from_dict
    from rrdist.train.trainer import pretrain

    name = resumed[0]
    config = {**trials[name]["config"], "out": str(tmp_path / "straight")}
    monkeypatch.setenv("RRDIST_TRACE", str(tmp_path / "trace" / "{run}"))
    pretrain(config_from_dict(config).validate())
    paused_trace = step_losses(tmp_path / "trace" / name, epochs)
    straight_trace = step_losses(tmp_path / "trace" / "straight", epochs)
    assert len(straight_trace) > len({e for e, _ in straight_trace}) > 1 and len(paused_trace) >= 2
    assert {k: straight_trace[k] for k in paused_trace} == paused_trace  # float64, bit for bit
    # The epoch figures hold every step, the halted run's ones too (its running sums travel in the checkpoint).
    assert [m["loss"] for m in epoch_lines(sweep_dir / "trials" / name)] == \
        [m["loss"] for m in epoch_lines(tmp_path / "straight")]
    # The trial trained in its own process (no Ray Train run: no snapshot of Train's), the straight run on a
    # Ray Train worker: the loop is the same either way.
    snapshot = Path("train") / "checkpoint_manager_snapshot.json"
    assert not (sweep_dir / "trials" / name / snapshot).exists() and (tmp_path / "straight" / snapshot).exists()
    a = torch.load(sweep_dir / "trials" / name / "backbone.pt", map_location="cpu")
    b = torch.load(tmp_path / "straight" / "backbone.pt", map_location="cpu")
    a, b = a["backbone"], b["backbone"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
