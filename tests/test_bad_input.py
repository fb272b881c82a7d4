"""Every user mistake gives one line naming the fix, exit status 2, no traceback."""

import subprocess
import sys

import pytest

from rrdist.cli import main
from rrdist.methods import make_config
from rrdist.errors import ConfigError
from rrdist.train.trainer import check_run_folder


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("flags,message", [
    (["--K", "1"], "K must be at least 2"),
    (["--batch-size", "1"], "batch size must be at least 2"),
    (["--gamma", "-1"], "gamma must be >= 0"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--backbone", "vgg16"], "unknown backbone 'vgg16'"),
    (["--aggregation", "prod"], "unknown aggregation 'prod'"),
    (["--method", "byol"], "unknown method 'byol'"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--batch-size", "2", "--workers", "3"], "cannot give each of 3 workers an image: pass --workers 2 or fewer"),
    (["--batch-size", "16", "--workers", "2-17"], "cannot give each of 17 workers an image: pass --workers 16"),
    (["--workers", "3-1"], "--workers 3-1: an elastic group needs 1 <= MIN <= MAX"),
    (["--workers", "0-2"], "--workers 0-2: an elastic group needs 1 <= MIN <= MAX"),
    (["--workers", "two"], "must be an int"),
    (["--workers", "1-x"], "--workers must be a count or MIN-MAX"),
    (["--min-workers", "3", "--workers", "2"], "fewest workers must be 1 to 2"),
    (["--resize-check-s", "0"], "--resize-check-s must be more than 0"),
    (["--checkpoint-every", "0"], "checkpoint interval must be at least 1 epoch"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
    (["--checkpoint-minutes", "nan"], "--checkpoint-minutes must be a finite number"),
    (["--checkpoint-minutes", "inf"], "--checkpoint-minutes must be a finite number (got inf): pass 0"),
    (["--check-every", "0"], "--check-every must be 1 to 100000 steps"),
    (["--check-every", str(10 ** 23)], "--check-every must be a finite number below 2^63"),
    (["--check-every", "100001"], "more would mean never"),
    (["--workers", "64"], "this machine's Ray has 2 CPUs"),
    (["--batch-size", "4", "--workers", "4", "--no-sync-bn"], "BatchNorm per worker (--no-sync-bn) needs 2"),
])
def test_bad_pretrain_settings(capsys, tmp_path, flags, message):
    code, err = run_cli(capsys, "pretrain", "--dataset", "digits", "--root", str(tmp_path), "--out",
                        str(tmp_path / "run"), *flags)
    assert code == 2
    assert err.startswith("rrdist: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_data_root(capsys, tmp_path):
    code, err = run_cli(capsys, "pretrain", "--dataset", "cifar10", "--root", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "run"))
    assert code == 2 and "does not exist" in err and "--root" in err and len(err.splitlines()) == 1


def test_wrong_data_root(capsys, tmp_path):
    code, err = run_cli(capsys, "data", "prepare", "cifar10", "--root", str(tmp_path))
    assert code == 2 and "no CIFAR-10 found" in err and len(err.splitlines()) == 1


def test_corrupt_beton_stops_pretraining(capsys, tmp_path):
    from rrdist.data.beton import prepare

    prepare("digits", tmp_path, log=lambda *a: None)
    beton = tmp_path / "ffcv" / "digits" / "train.beton"
    beton.write_bytes(beton.read_bytes()[:1000])
    capsys.readouterr()  # drop the writer's progress bar
    code, err = run_cli(capsys, "pretrain", "--dataset", "digits", "--root", str(tmp_path), "--out",
                        str(tmp_path / "run"))
    assert code == 2 and "truncated" in err and "rrdist data prepare digits" in err
    assert len(err.splitlines()) == 1


def test_bad_config_file(capsys, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("K: 4\nviews: 3\n")
    code, err = run_cli(capsys, "pretrain", "--config", str(bad))
    assert code == 2 and "unknown key 'views'" in err
    bad.write_text("K: four\n")
    code, err = run_cli(capsys, "pretrain", "--config", str(bad))
    assert code == 2 and "'K'" in err and "int" in err


def test_existing_run_folder_with_other_settings(tmp_path):
    cfg = make_config(dataset="digits", K=4, out=str(tmp_path))
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert check_run_folder(cfg, tmp_path) is True  # same settings: resume
    longer = make_config(dataset="digits", K=4, epochs=500, out=str(tmp_path))
    assert check_run_folder(longer, tmp_path) is True  # more epochs: still the same run
    with pytest.raises(ConfigError, match="K=4 .now 8.*new --out folder"):
        check_run_folder(make_config(dataset="digits", K=8, out=str(tmp_path)), tmp_path)


def test_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rrdist", "pretrain", "--K", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr and "K must be at least 2" in proc.stderr


def test_evaluate_needs_a_run_folder(capsys, tmp_path):
    code, err = run_cli(capsys, "evaluate", "linear", "--run", str(tmp_path))
    assert code == 2 and "not a run folder" in err


@pytest.mark.usefixtures("ray_session")
def test_a_group_too_large_for_the_sessions_own_local_ray_is_refused_at_once(capsys, tmp_path):
    """With this process's private Ray already running, its CPUs are the limit (not a wait of minutes)."""
    code, err = run_cli(capsys, "pretrain", "--dataset", "digits", "--root", str(tmp_path), "--out",
                        str(tmp_path / "run"), "--workers", "64")
    assert code == 2 and "do not fit: this machine's Ray has" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
