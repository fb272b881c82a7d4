"""What a successful command prints: rrdist's own lines, Ray's only warnings and errors, no traceback;
the sweep's lines (one per trial start and epoch, by the trial's name and its run's epoch); a point of
one seed in results.md without a spread."""

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent

# Ray's lines a successful pretrain (or its resume) printed before: none says anything to act on.
RAY_NOISE = ["Traceback", "Token authentication", "authentication token", "Started a local Ray instance",
             "Requesting resources", "Attempting to start training worker group", "Started training worker group",
             "Setting up process group", "A run snapshot was found", "RunConfig(name)", "Failed to send resource request"]


@pytest.mark.ray
def test_pretrain_and_its_resume_print_rrdist_lines_only(tmp_path, digits_root):
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(digits_root, root)
    cmd = [sys.executable, "-m", "rrdist", "pretrain", "--dataset", "digits", "--root", str(root), "--K", "2",
           "--batch-size", "64", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outputs = []
    for epochs in (1, 2):  # the second run resumes the first
        done = subprocess.run(cmd + ["--epochs", str(epochs)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert [noise for noise in RAY_NOISE if noise in output] == [], output[-3000:]
        assert f"epoch {epochs}/{epochs}" in output and "done:" in done.stdout, output[-3000:]
        outputs.append(output)
    assert "epoch 1/1" in outputs[0] and "resuming from epoch 1" in outputs[1] and "epoch 1/" not in outputs[1]


def test_ray_train_console_shows_its_warnings_not_its_info():
    from rrdist.train.logs import AUTOSCALING_CLIENT, PG_CLEANER, RAY_TRAIN, quiet_train_console

    train = logging.getLogger(RAY_TRAIN)
    touched = [logging.getLogger(n) for n in (AUTOSCALING_CLIENT, PG_CLEANER)]
    saved = (train.handlers[:], train.level, train.propagate, [t.level for t in touched])
    stream = io.StringIO()
    # As Ray Train sets up its controller's logger: DEBUG, a console handler (and files), children reset.
    train.handlers, train.propagate = [logging.StreamHandler(stream)], False
    train.setLevel(logging.DEBUG)
    try:
        quiet_train_console()
        logging.getLogger(f"{RAY_TRAIN}.v2._internal.execution.scaling_policy.scaling_policy").info(
            "Requesting resources: {'CPU': 1} * 1")
        logging.getLogger(f"{RAY_TRAIN}.v2._internal.execution.checkpoint.checkpoint_manager").info(
            "A run snapshot was found in storage folder")
        logging.getLogger(f"{RAY_TRAIN}.v2._internal.execution.worker_group.worker_group").warning(
            "a warning to act on")
        logging.getLogger(AUTOSCALING_CLIENT).warning("Failed to send resource request", exc_info=True)
        logging.getLogger(AUTOSCALING_CLIENT).error("an error to act on")
    finally:
        train.handlers, train.level, train.propagate = saved[0], saved[1], saved[2]
        for logger, level in zip(touched, saved[3]):
            logger.setLevel(level)
    assert stream.getvalue() == "a warning to act on\nan error to act on\n"


def test_sweep_lines_name_the_trial_and_its_epoch(tmp_path, capsys):
    from rrdist.tune.driver import _trial_lines
    from rrdist.tune.space import parse
    from rrdist.tune.trial import SweepContext

    spec = parse({"fixed": {"dataset": "digits", "epochs": 10}, "axes": {"K": {"grid": [2]}}, "seeds": 1})
    lines = _trial_lines(spec, SweepContext(spec.to_dict(), str(tmp_path / "sweep"), str(tmp_path / "data")))
    trial = SimpleNamespace(trial_id="0a3ad_00000", config={"K": 2, "seed": 0}, last_result=None)
    lines.on_trial_start(0, [trial], trial)
    # Tune's training_iteration is not the run's epoch: a paused or resumed trial starts it again.
    lines.on_trial_result(0, [trial], trial, {"epoch": 3, "loss": 0.0871, "training_iteration": 1})
    lines.on_trial_result(0, [trial], trial, {"epoch": 10, "loss": 0.08, "halted": 1})  # the scheduler's pause
    final = {"epoch": 10, "loss": 0.08, "linear_acc": 0.5, "reused": 0}  # its evaluations: its end line shows them
    lines.on_trial_result(0, [trial], trial, final)
    trial.last_result = final
    lines.on_trial_complete(0, [trial], trial)
    assert capsys.readouterr().out.splitlines() == [
        "[rrdist] trial K=2,seed=0 started (10 epochs)",
        "[rrdist] trial K=2,seed=0 epoch 3/10 loss 0.0871",
        "[rrdist] trial K=2,seed=0 finished: loss 0.0800, linear 50.00%"]


def test_a_point_of_one_seed_shows_its_value_without_a_spread():
    from rrdist.tune.report import _cell, _mean_std, render

    assert _cell(_mean_std([61.234])) == "61.23"
    assert _cell(_mean_std([0.08712]), 4) == "0.0871"
    assert _cell(_mean_std([60.0, 62.0])) == "61.00 ± 1.41"
    assert _cell(None) == "—"
    sweep = {"spec": {"name": "s", "fixed": {}, "axes": {"K": {}}, "seeds": [0, 1], "evaluations": {"linear": {}}},
             "root": "data"}
    rows = [{"K": 2, "linear": _mean_std([61.0]), "linear_paper": None, "seeds_done": 1, "stopped": [],
             "interrupted": [], "failed": [], "loss": _mean_std([0.08])}]
    table = render(sweep, rows, [])
    assert "| 2 | 61.00 | — | 1 | 0.0800 | done |" in table and "± 0.00" not in table, table
    assert "one seed: its value alone" in table and "**Best** (linear): K=2: 61.00%" in table
