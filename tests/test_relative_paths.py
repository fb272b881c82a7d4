"""Relative paths mean the folder the command runs in, for every process and node; a resume that
cannot start leaves the run folder's settings as they were; a removed Ray snapshot falls back to
the run folder's newest checkpoint (what the one-line error for a damaged snapshot advises)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rrdist.cli import main


def epoch_lines(run: Path) -> list[dict]:
    return [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "event" not in m]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_root):
    """A working folder of its own holding the data at ./data; tests run commands from inside it."""
    work = tmp_path_factory.mktemp("relative") / "work"
    work.mkdir()
    shutil.copytree(digits_root, work / "data")
    return work


@pytest.mark.usefixtures("ray_session")
def test_pretrain_evaluate_and_sweep_write_where_the_user_asked(workdir, monkeypatch, capfd):
    monkeypatch.chdir(workdir)
    assert main(["pretrain", "--dataset", "digits", "--root", "data", "--K", "2", "--epochs", "1", "--workers", "2",
                 "--batch-size", "32", "--out", "runs/rel1"]) == 0
    run = workdir / "runs" / "rel1"
    assert (run / "backbone.pt").is_file() and (run / "train" / "epoch_0001" / "state.pt").is_file()
    assert [m["epoch"] for m in epoch_lines(run)] == [1] and list((run / "tb").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["out"] == str(run) and saved["root"] == str(workdir / "data")  # the same on every node

    assert main(["evaluate", "linear", "--run", "runs/rel1", "--epochs", "1"]) == 0
    assert json.loads((run / "eval" / "linear-trained-digits.json").read_text())["settings"]["epochs"] == 1

    # paths inside a settings file mean the same folder, and so does the file's own path
    Path("settings.yaml").write_text("dataset: digits\nroot: data\nout: runs/from-yaml\nK: 2\nepochs: 1\n"
                                     "batch_size: 32\n")
    assert main(["pretrain", "--config", "settings.yaml"]) == 0
    assert (workdir / "runs" / "from-yaml" / "backbone.pt").is_file()
    assert yaml.safe_load((workdir / "runs" / "from-yaml" / "config.yaml").read_text())["root"] == str(workdir / "data")

    Path("space.yaml").write_text(yaml.safe_dump({
        "name": "rel", "fixed": {"dataset": "digits", "epochs": 1, "batch_size": 32}, "axes": {"K": {"grid": [2]}},
        "trial": {"workers": 2}, "evaluations": {"linear": {"epochs": 1}}}))
    assert main(["sweep", "space.yaml", "--root", "data", "--out", "runs/sweeps"]) == 0
    sweep = workdir / "runs" / "sweeps" / "rel"
    trial = sweep / "trials" / "K=2,seed=0"
    assert json.loads((trial / "trial.json").read_text())["status"] == "completed"
    assert (trial / "backbone.pt").is_file() and (trial / "eval" / "linear-trained-digits.json").is_file()
    assert [m["epoch"] for m in epoch_lines(trial)] == [1] and (sweep / "results.md").is_file()
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err

    # What the one-line error for damaged Tune state advises: without Tune's files the sweep runs
    # again as a new Tune run, and the finished trial is reused, not trained again.
    record = (trial / "trial.json").read_bytes()
    for name in ["tuner.pkl", *(p.name for p in sweep.glob("*state-*.json"))]:
        (sweep / name).unlink()
    assert main(["sweep", "space.yaml", "--root", "data", "--out", "runs/sweeps"]) == 0
    assert (trial / "trial.json").read_bytes() == record and [m["epoch"] for m in epoch_lines(trial)] == [1]
    assert "done before; not re-run" in capfd.readouterr().out


@pytest.mark.usefixtures("ray_session")
def test_a_resume_that_cannot_start_keeps_the_saved_settings(workdir, monkeypatch, capsys):
    """Every checkpoint unreadable: the resume with a new --epochs fails in its workers, before
    training, and config.yaml still says what the run did."""
    monkeypatch.chdir(workdir)
    run = workdir / "runs" / "broken"
    shutil.copytree(workdir / "runs" / "rel1", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["out"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    saved = (run / "config.yaml").read_bytes()
    (run / "train" / "epoch_0001" / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    code = main(["pretrain", "--dataset", "digits", "--root", "data", "--K", "2", "--epochs", "2", "--workers", "2",
                 "--batch-size", "32", "--out", "runs/broken"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no readable checkpoint" in err and len(err.splitlines()) == 1, err
    assert (run / "config.yaml").read_bytes() == saved
    assert [m["epoch"] for m in epoch_lines(run)] == [1]


@pytest.mark.usefixtures("ray_session")
def test_without_rays_snapshot_the_run_resumes_from_its_newest_checkpoint(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    run = workdir / "runs" / "no-snapshot"
    shutil.copytree(workdir / "runs" / "rel1", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "out": str(run)}, sort_keys=False))
    (run / "train" / "checkpoint_manager_snapshot.json").unlink()
    first = epoch_lines(run)
    assert main(["pretrain", "--dataset", "digits", "--root", "data", "--K", "2", "--epochs", "2", "--workers", "2",
                 "--batch-size", "32", "--out", "runs/no-snapshot"]) == 0
    lines = epoch_lines(run)
    assert [m["epoch"] for m in lines] == [1, 2] and lines[0] == first[0]  # epoch 1 was not trained again
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    assert (run / "train" / "checkpoint_manager_snapshot.json").is_file()
