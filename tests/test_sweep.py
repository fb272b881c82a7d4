"""Ray Tune sweeps on a real local Ray: a grid with seeds, the results table, resume after a kill."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from rrdist.cli import main
from rrdist.tune.driver import run_sweep
from rrdist.tune.space import load

QUIET = dict(log=lambda *a: None)


def write_space(path: Path, **overrides) -> Path:
    space = {"name": path.stem, "fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 1, "batch_size": 64},
             "axes": {"K": {"grid": [2, 3]}, "gamma": {"grid": [0, 2]}}, "seeds": 2,
             "trial": {"workers": 1, "cpus_per_worker": 1}, "concurrency": 2,
             "evaluations": {"linear": {"epochs": 3}}}
    space.update(overrides)
    path.write_text(yaml.safe_dump(space))
    return path


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*/trial.json")}


def hparams_runs(sweep_dir: Path) -> set[str]:
    runs = set()
    for f in (sweep_dir / "hparams").rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    runs.add(f.parent.name)
    return runs


@pytest.mark.usefixtures("ray_session")
def test_grid_with_seeds_gives_mean_and_std(tmp_path, digits_root):
    # One point of two seeds: its row's mean and spread over real trials. Rows of several points
    # are in test_points_axis_runs_one_trial_per_bundle; the pictures against K and gamma are
    # drawn from records in tests/test_figures.py.
    space = write_space(tmp_path / "grid.yaml", axes={"K": {"grid": [3]}})
    sweep_dir = run_sweep(space, root=str(digits_root), out=tmp_path / "sweeps", **QUIET)
    trials = records(sweep_dir)
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials.values())
    for t in trials.values():  # each trial is a full run folder
        run = sweep_dir / "trials" / t["trial"]
        assert (run / "backbone.pt").is_file() and any((run / "tb").iterdir())
        assert (run / "train" / "epoch_0001" / "state.pt").is_file()
    with open(sweep_dir / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    accs = [100 * t["metrics"]["linear_acc"] for t in trials.values()]
    assert len(accs) == 2 and row["K"] == "3" and row["seeds_done"] == "2"
    assert float(row["linear_mean"]) == pytest.approx(np.mean(accs), abs=1e-3)
    assert float(row["linear_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-3)
    table = (sweep_dir / "results.md").read_text()
    assert "| K | linear acc % (mean ± std) | paper |" in table, table
    assert f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}" in table and "**Best** (linear)" in table
    with open(sweep_dir / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert hparams_runs(sweep_dir) == set(trials)
    # `rrdist report` rebuilds the same table from disk
    assert main(["report", str(sweep_dir)]) == 0
    assert (sweep_dir / "results.md").read_text() == table


RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")  # Ray's prefix on a line forwarded from a worker


def test_bad_space_files_give_one_line(tmp_path, capsys):
    cases = {
        "axez: {K: {grid: [2]}}\n": "'axez' is not a search-space key",
        "axes: {K: {grid: [1, 4]}}\n": "K must be at least 2",
        "axes: {K: {range: [2, 4]}}\n": "'axes.K' must be one of",
        "axes: {lr: {loguniform: [0.1, 0.01]}}\n": "'axes.lr.loguniform' must be [low, high]",
        "fixed: {out: x}\n": "'fixed.out' is set by the sweep itself",
        "seeds: 0\n": "'seeds' must be a count",
        "scheduler: {bohb: {}}\n": "'scheduler' must be fifo, {asha: {...}} or {hyperband: {...}}",
        "evaluations: [linear, knn]\n": "'evaluations.knn' is not an evaluation",
        "trial: {gpus: 1}\n": "'trial.gpus' is not a trial setting",
        "axes: [K]\n": "'axes' must be a mapping",
        "K: [2\n": "not valid YAML",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        code = main(["sweep", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "sweeps")])
        # This process is the test session's Ray driver: lines Ray forwards from other processes of the
        # session (an earlier test's trial actor ending, "(run_trial pid=N) ...") are not the command's.
        err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                        if not RAY_FORWARDED.match(line))
        assert code == 2, text
        assert message in err and len(err.splitlines()) == 1, (text, err)
    assert not (tmp_path / "sweeps").exists()
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_spaces_are_valid():
    spaces = sorted(Path(__file__).parent.parent.glob("tune_spaces/*.yaml"))
    assert {p.stem for p in spaces} >= {"demo", "k_gamma", "k_ablation", "paper_linear"}
    for path in spaces:
        spec = load(path)
        assert spec.trial_count() >= 1
    k_gamma = load(Path(__file__).parent.parent / "tune_spaces" / "k_gamma.yaml")
    assert k_gamma.trial_count() == 5 * 4 * 3
    search = load(Path(__file__).parent.parent / "tune_spaces" / "k_gamma_search.yaml")
    assert search.axes == k_gamma.axes and search.scheduler == {"hyperband": {  # what bench/RESULTS.md measured
        "metric": "knn_acc", "mode": "max", "grace_period": 1, "reduction_factor": 4.0, "judge": "point"}}
    assert search.trial_config(search.grid_points()[0], 0, "data", "out").checkpoint_every == 1  # pauses resume at rungs
    assert search.trial_config(search.grid_points()[0], 0, "data", "out").value("knn_every") == 1
    paper = load(Path(__file__).parent.parent / "tune_spaces" / "paper_linear.yaml")
    from rrdist.methods import METHODS

    assert set(paper.axes["method"]["grid"]) == set(METHODS)  # Table 2 holds every method
    ablations = load(Path(__file__).parent.parent / "tune_spaces" / "ablations.yaml")
    configs = [ablations.trial_config(p, 0, "data", "out") for p in ablations.grid_points()]
    assert {c.settings.aggregation for c in configs if c.backbone == "conv4"} == {"sum", "mean", "max", "cat"}  # Table 13
    assert {c.settings.head for c in configs if c.backbone == "resnet32"} == {"relation", "dot", "encoder_dot"}  # Table 14
    assert ablations.trial_count() == 7 * 3


def test_report_tells_completed_stopped_and_interrupted_trials_apart(tmp_path):
    from rrdist.tune.records import sweep_trial, write_record
    from rrdist.tune.report import write_report
    from rrdist.tune.space import parse

    spec = parse({"fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 3},
                  "axes": {"K": {"grid": [2, 3, 4]}}, "seeds": 2, "scheduler": {"asha": {}}})
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({"spec": spec.to_dict(), "root": "data"}))
    done = {"status": "completed", "metrics": {"epoch": 3, "loss": 0.5, "linear_acc": 0.9}}
    endings = {(2, 0): done, (2, 1): done, (3, 0): done,
               (3, 1): {"status": "stopped", "epoch": 1, "metrics": {"epoch": 1, "loss": 0.7}},
               (4, 0): {"status": "interrupted", "epoch": 2, "metrics": {"epoch": 2, "loss": 0.6}},
               (4, 1): {"status": "interrupted", "epoch": None, "metrics": {}}}
    for (K, seed), ending in endings.items():
        trial = sweep_trial(spec, {"K": K, "seed": seed}, "t1", str(sweep_dir), "data")
        write_record(trial.run_dir, {**trial.record, **ending})
    names = {p.name for p in (sweep_dir / "trials").iterdir()}
    assert names == {f"K={K},seed={seed}" for K, seed in endings}  # a grid's names leave out Tune's id

    status = {line.split(" | ")[0]: line.split(" | ")[-1] for line in write_report(sweep_dir).splitlines()
              if line.startswith("| ") and line[2].isdigit()}
    assert status["| 2"] == "done |"
    assert status["| 3"] == "stopped early (asha): seed 1 at epoch 1 (loss 0.7) |"
    assert status["| 4"].startswith("interrupted: seed 0 at epoch 2; seed 1 before its first epoch (")
    assert "--resume" in status["| 4"] and "asha" not in status["| 4"]
    with open(sweep_dir / "results.csv") as f:
        counts = {row["K"]: (row["seeds_done"], row["stopped"], row["interrupted"], row["failed"])
                  for row in csv.DictReader(f)}
    assert counts == {"2": ("2", "0", "0", "0"), "3": ("1", "1", "0", "0"), "4": ("0", "0", "2", "0")}
    with open(sweep_dir / "trials.csv") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == sorted(e["status"] for e in endings.values())


def test_only_a_scheduler_stops_trials_early():
    from types import SimpleNamespace

    from rrdist.tune.driver import _ending
    from rrdist.tune.space import parse

    fifo = parse({"fixed": {"dataset": "digits"}, "axes": {"K": {"grid": [2]}}})
    asha = parse({"fixed": {"dataset": "digits"}, "axes": {"K": {"grid": [2]}}, "scheduler": {"asha": {}}})
    # Tune marks the last result done when it ends a trial itself; a Ctrl-C leaves it as it was.
    ended = SimpleNamespace(error=None, metrics={"epoch": 2, "loss": 0.5, "done": True})
    cut_off = SimpleNamespace(error=None, metrics={"epoch": 1, "loss": 0.6, "done": False})
    never_ran = SimpleNamespace(error=None, metrics={})
    assert _ending(ended, asha)["status"] == "stopped" and _ending(ended, asha)["epoch"] == 2
    assert [_ending(r, fifo)["status"] for r in (ended, cut_off, never_ran)] == ["interrupted"] * 3
    assert _ending(cut_off, asha) == {"status": "interrupted", "epoch": 1,
                                      "metrics": {"epoch": 1, "loss": 0.6}}
    assert _ending(never_ran, asha)["epoch"] is None
    failed = SimpleNamespace(error=RuntimeError("Traceback ...\nValueError: bad"), metrics={})
    assert _ending(failed, fifo) == {"status": "failed", "error": "ValueError: bad"}


def test_points_axis_spreads_its_bundles_and_rejects_bad_ones():
    from rrdist.errors import ConfigError
    from rrdist.tune.space import parse

    spec = parse({"fixed": {"dataset": "digits", "backbone": "conv4"},
                  "axes": {"variant": {"points": ["aggregation=sum", "head=dot+K=5+backbone=resnet8"]}}})
    configs = [spec.trial_config(p, 0, "data", "out") for p in spec.grid_points()]
    assert (configs[0].settings.aggregation, configs[0].settings.head, configs[0].backbone) == ("sum", "relation", "conv4")
    assert (configs[1].settings.head, configs[1].settings.K, configs[1].backbone) == ("dot", 5, "resnet8")
    for bad, match in [(["aggregation"], "is not setting=value"), (["nosuch=1"], "'nosuch'"),
                       (["seed=3"], "'seed'"), (["K=two"], "must be an int")]:
        with pytest.raises(ConfigError, match=match):
            parse({"fixed": {"dataset": "digits"}, "axes": {"variant": {"points": bad}}})


def test_per_method_settings_apply_to_that_method_only(tmp_path):
    from rrdist.errors import ConfigError
    from rrdist.tune.space import parse

    spec = parse({"fixed": {"batch_size": 64, "dataset": "digits"},
                  "axes": {"method": {"grid": ["relational", "simclr"]}},
                  "per_method": {"simclr": {"batch_size": 128}}})
    configs = {p["method"]: spec.trial_config(p, 0, "data", "out") for p in spec.grid_points()}
    assert configs["simclr"].batch_size == 128 and configs["relational"].batch_size == 64
    with pytest.raises(ConfigError, match="per_method.nosuch"):
        parse({"axes": {"method": {"grid": ["simclr"]}}, "per_method": {"nosuch": {"batch_size": 8}}})
    with pytest.raises(ConfigError, match="is also an axis"):
        parse({"axes": {"batch_size": {"grid": [8, 16]}}, "per_method": {"simclr": {"batch_size": 8}}})


@pytest.mark.usefixtures("ray_session")
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, digits_root):
    import ray

    space = write_space(tmp_path / "killme.yaml", axes={"K": {"grid": [2, 3]}}, seeds=1, concurrency=1,
                        evaluations={"linear": {"epochs": 2}})
    sweep_dir = tmp_path / "sweeps" / "killme"
    cmd = [sys.executable, "-m", "rrdist", "sweep", str(space), "--root", str(digits_root),
           "--out", str(tmp_path / "sweeps"), "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and driver.poll() is None:
        done = [t for t in records(sweep_dir).values() if t["status"] == "completed"] if sweep_dir.exists() else []
        if done:
            break
        time.sleep(0.5)
    assert driver.poll() is None, "the sweep ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies with no chance to save anything
    driver.wait()
    finished = {name: t for name, t in records(sweep_dir).items() if t["status"] == "completed"}
    assert len(finished) == 1
    before = {name: ((sweep_dir / "trials" / name / "trial.json").stat().st_mtime_ns,
                     (sweep_dir / "trials" / name / "metrics.jsonl").read_text()) for name in finished}

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = records(sweep_dir)
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials.values())
    for name, (mtime, metrics) in before.items():  # finished trials were not trained again
        assert (sweep_dir / "trials" / name / "trial.json").stat().st_mtime_ns == mtime
        assert (sweep_dir / "trials" / name / "metrics.jsonl").read_text() == metrics
    for name in trials:  # and no trial trained its epoch twice
        lines = (sweep_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()
        assert [m["epoch"] for m in map(json.loads, lines) if "event" not in m] == [1]
    assert "resuming the sweep" in again.stdout
    assert (sweep_dir / "results.md").read_text().count("| done |") == 2


def epochs_logged(sweep_dir: Path) -> dict[str, list[int]]:
    """Each trial's epochs in its metrics.jsonl (one line per epoch trained)."""
    return {p.parent.name: [m["epoch"] for m in map(json.loads, p.read_text().splitlines()) if "event" not in m]
            for p in (sweep_dir / "trials").glob("*/metrics.jsonl")}


@pytest.mark.usefixtures("ray_session")
def test_interrupted_sweep_reads_interrupted_and_resume_completes_it(tmp_path, digits_root):
    import ray

    epochs = 6  # the trial is still training when Ctrl-C comes; it saves every epoch
    fixed = {"dataset": "digits", "backbone": "conv4", "epochs": epochs, "batch_size": 64, "checkpoint_every": 1}
    space = write_space(tmp_path / "ctrlc.yaml", fixed=fixed, axes={"K": {"grid": [2]}}, seeds=1,
                        evaluations={"linear": {"epochs": 1}})
    sweep_dir = tmp_path / "sweeps" / "ctrlc"
    cmd = [sys.executable, "-m", "rrdist", "sweep", str(space), "--root", str(digits_root),
           "--out", str(tmp_path / "sweeps"), "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "interrupted.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        # Three epochs logged: the first one's checkpoint is saved, and its report has most likely
        # reached Tune (through Train's controller, a second or two behind).
        while time.time() < deadline and driver.poll() is None and \
                max(map(len, epochs_logged(sweep_dir).values()), default=0) < 3:
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: Tune ends the trials, fit() returns, the report follows
        driver.wait(timeout=120)
    assert driver.returncode == 130  # the shell's code for Ctrl-C, after the report is written
    (cut,) = records(sweep_dir).values()
    assert cut["status"] == "interrupted" and (cut["epoch"] is None or 1 <= cut["epoch"] < epochs), cut
    where = "before its first epoch" if cut["epoch"] is None else f"at epoch {cut['epoch']}"
    table = (sweep_dir / "results.md").read_text()
    assert f"interrupted: seed 0 {where}" in table and "--resume" in table and "asha" not in table, table
    with open(sweep_dir / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["seeds_done"], row["stopped"], row["interrupted"], row["failed"]) == ("0", "0", "1", "0")

    again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = records(sweep_dir)
    assert "resuming the sweep" in again.stdout and [t["status"] for t in trials.values()] == ["completed"], trials
    # It went on from a checkpoint, not from the start (an epoch it was cut off in may be trained again).
    logged = epochs_logged(sweep_dir)[cut["trial"]]
    assert set(logged) == set(range(1, epochs + 1)) and logged.count(1) == 1, logged
    table = (sweep_dir / "results.md").read_text()
    assert "| done |" in table and "interrupted" not in table, table


@pytest.mark.usefixtures("ray_session")
def test_points_axis_runs_one_trial_per_bundle(tmp_path, digits_root):
    # The first bundle also runs the semi-supervised variant (label indices through the real loader).
    points = ["aggregation=sum+label_fraction=0.5", "head=dot"]
    # Both trials also train an online probe and run every kind of evaluation.
    fixed = {"dataset": "digits", "backbone": "conv4", "epochs": 1, "batch_size": 64, "online_probe": True}
    space = write_space(tmp_path / "variants.yaml", axes={"variant": {"points": points}}, seeds=1, fixed=fixed,
                        evaluations={"linear": {"epochs": 2}, "retrieval": {"per_class": 10},
                                     "finetune": {"epochs": 1}})
    sweep_dir = run_sweep(space, root=str(digits_root), out=tmp_path / "sweeps", **QUIET)
    trials = records(sweep_dir)
    assert sorted(trials) == [f"variant={p},seed=0" for p in points]
    got = {(t["config"]["aggregation"], t["config"]["head"], t["config"]["label_fraction"]) for t in trials.values()}
    assert got == {("sum", "relation", 0.5), ("cat", "dot", 0.0)}
    assert all(t["status"] == "completed" for t in trials.values())
    for t in trials.values():
        for key in ("linear_acc", "retrieval_acc", "finetune_acc", "probe_acc"):
            assert 0.0 < t["metrics"][key] <= 1.0, (key, t["metrics"])
        run = sweep_dir / "trials" / t["trial"] / "eval"
        assert {"retrieval-digits.json", "retrieval-digits.png", "finetune-digits.json"} <= {f.name for f in run.iterdir()}
    report = (sweep_dir / "results.md").read_text()
    assert "aggregation=sum" in report and "finetune acc" in report and "retrieval acc" in report


def test_a_space_with_a_worker_range_makes_every_trial_an_elastic_group():
    from rrdist.tune.space import parse

    fixed = {"dataset": "digits", "epochs": 2, "batch_size": 64}
    spec = parse({"fixed": fixed, "axes": {"K": {"grid": [2, 4]}}, "trial": {"workers": "2-5"}}, "space.yaml")
    configs = [spec.trial_config(p, 0, "data", "out") for p in spec.grid_points()]
    assert [(c.min_workers, c.workers) for c in configs] == [(2, 5), (2, 5)]
    plain = parse({"fixed": fixed, "axes": {"K": {"grid": [2]}}, "trial": {"workers": 3}}, "space.yaml")
    (config,) = [plain.trial_config(p, 0, "data", "out") for p in plain.grid_points()]
    assert (config.min_workers, config.workers) == (0, 3)  # a fixed group


def test_a_one_worker_trial_reserves_its_worker_and_a_larger_one_leaves_it_to_ray_train():
    """A one-worker trial trains in its own process, which holds its worker's CPUs and GPU; the process
    of a larger (or elastic) trial only waits on its Train workers and holds nothing they need."""
    from rrdist.tune.driver import trial_resources
    from rrdist.tune.space import parse
    from rrdist.tune.trial import trains_in_trial

    def spec(trial):
        return parse({"fixed": {"dataset": "digits", "epochs": 2}, "axes": {"K": {"grid": [2]}}, "trial": trial},
                     "space.yaml")

    cases = [({"workers": 1, "cpus_per_worker": 2}, {"cpu": 2}, True),
             ({"workers": 1, "gpus_per_worker": 0.5}, {"cpu": 1, "gpu": 0.5}, True),
             ({"workers": 2}, {"cpu": 0, "memory": 1}, False),
             ({"workers": "1-3"}, {"cpu": 0, "memory": 1}, False)]
    for trial, resources, own in cases:
        s = spec(trial)
        assert trial_resources(s) == resources, trial
        (config,) = [s.trial_config(p, 0, "data", "out") for p in s.grid_points()]
        assert trains_in_trial(s.trial) is own and trains_in_trial(config) is own, trial
