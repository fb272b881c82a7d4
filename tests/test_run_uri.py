"""Run folders at a bucket URI, against a real S3 server (moto's) on 127.0.0.1: Ray Train's checkpoints
and rrdist's own files (config, metrics, TensorBoard, backbone, evaluations) live in the bucket."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrdist.methods import config_from_yaml_text, make_config
from rrdist.errors import ConfigError, DataError
from rrdist.storage import RunFolder, join, working_copy
from rrdist.train.trainer import check_run_folder, pretrain

REPO = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda *a: None)
KEY, SECRET = "rrdist-test", "rrdist-test-secret"


@pytest.fixture(scope="module")
def s3():
    """(uri(path), pyarrow filesystem, endpoint) of a bucket `runs` on a local S3 server."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, endpoint_override=endpoint, scheme="http",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("runs")

    def uri(path):
        return f"s3://{KEY}:{SECRET}@runs/{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1"

    yield uri, fs, endpoint
    server.stop()


def bucket_files(fs, prefix):
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(f"runs/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path[len(f"runs/{prefix}/"):] for i in infos if i.type == pafs.FileType.File)


def read(fs, path):
    with fs.open_input_stream(f"runs/{path}") as f:
        return f.read()


def test_run_folder_files_at_a_uri(s3):
    uri, fs, _ = s3
    run = RunFolder(uri("unit"))
    assert run.remote and run.read_text("config.yaml") is None
    run.write_text("a/b.txt", "one")
    assert read(fs, "unit/a/b.txt") == b"one" and run.read_text("a/b.txt") == "one"
    (run.local / "tb").mkdir(parents=True, exist_ok=True)
    (run.local / "tb" / "events.1").write_bytes(b"\x00\x01")
    (run.local / "metrics.jsonl").write_text("{}\n")
    run.push("tb", "metrics.jsonl")
    assert bucket_files(fs, "unit") == ["a/b.txt", "metrics.jsonl", "tb/events.1"]
    fs.create_dir("runs/unit/train/epoch_0001")
    run.write_text("train/epoch_0002/state.pt", "x")
    assert run.subfolders("train") == ["epoch_0001", "epoch_0002"]
    run.delete("metrics.jsonl")
    run.pull("metrics.jsonl", "a/b.txt")  # the working copy follows the bucket: gone there, gone here
    assert not (run.local / "metrics.jsonl").exists() and (run.local / "a" / "b.txt").read_text() == "one"
    assert RunFolder(uri("unit")).local == run.local and RunFolder(uri("other")).local != run.local


def test_evaluation_copy_pushes_only_what_it_wrote(s3):
    uri, fs, _ = s3
    run = RunFolder(uri("eval-copy"))
    run.write_text("config.yaml", make_config(dataset="digits").to_yaml())
    (run.local / "tb").mkdir(parents=True, exist_ok=True)
    (run.local / "tb" / "old").write_text("stale")  # a working copy's leftover is not sent back
    with working_copy(uri("eval-copy"), pull=("backbone.pt",), push=("eval", "tb")) as local:
        assert (local / "config.yaml").is_file() and not (local / "backbone.pt").exists()
        (local / "eval").mkdir(exist_ok=True)
        (local / "eval" / "linear.json").write_text("{}")
    assert bucket_files(fs, "eval-copy") == ["config.yaml", "eval/linear.json"]
    assert str(run) == f"s3://runs/eval-copy?{uri('x').split('?')[1]}"  # credentials are never printed
    with pytest.raises(DataError, match="is not a run folder"):
        with working_copy(uri("nothing-here"), pull=(), push=()):
            pass


def test_fsspec_only_protocols_work_too():
    run = RunFolder("memory://scratch/run-a")  # fsspec's in-memory filesystem: pyarrow has no memory://
    run.write_text("config.yaml", "K: 4\n")
    assert run.read_text("config.yaml") == "K: 4\n" and run.read_text("metrics.jsonl") is None
    run.write_text("train/epoch_0001/state.pt", "x")
    assert run.subfolders("train") == ["epoch_0001"]


def test_bad_uri_is_one_line():
    with pytest.raises(DataError, match="cannot open --out nosuchscheme://x"):
        RunFolder("nosuchscheme://x/y")


def test_join_keeps_a_uris_query_at_its_end(tmp_path):
    assert join("s3://b/sweeps?endpoint_override=h:1", "k", "trials") == "s3://b/sweeps/k/trials?endpoint_override=h:1"
    assert join("gs://b/sweeps/", "k") == "gs://b/sweeps/k"
    assert join(tmp_path, "k", "trials") == str(tmp_path / "k" / "trials")


@pytest.mark.usefixtures("ray_session")
def test_pretraining_with_out_at_a_bucket(s3, digits_root, tmp_path):
    uri, fs, endpoint = s3
    out = uri("digits-k3")
    cfg = make_config(dataset="digits", root=str(digits_root), backbone="conv4", K=3, batch_size=32,
                         epochs=2, workers=1, checkpoint_every=1, out=out)
    first = pretrain(cfg, **QUIET)
    files = bucket_files(fs, "digits-k3")
    assert {"config.yaml", "metrics.jsonl", "backbone.pt", "train/epoch_0001/state.pt",
            "train/epoch_0002/state.pt"} <= set(files)
    assert any(f.startswith("tb/events.out.tfevents") for f in files)
    assert [json.loads(x)["epoch"] for x in read(fs, "digits-k3/metrics.jsonl").decode().splitlines()] == [1, 2]
    assert config_from_yaml_text(read(fs, "digits-k3/config.yaml").decode(), "bucket") == cfg
    assert first.run_dir == RunFolder(out).local and (first.run_dir / "backbone.pt").is_file()
    with pytest.raises(ConfigError, match="holds a run with K=3"):
        check_run_folder(make_config(**{**cfg.to_dict(), "K": 4}), RunFolder(out))

    # Another machine (no working copy) continues the run from the bucket: epoch 3 only.
    shutil.rmtree(first.run_dir)
    longer = make_config(**{**cfg.to_dict(), "epochs": 3})
    second = pretrain(longer, **QUIET)
    assert second.resumed and second.metrics["epoch"] == 3
    assert [json.loads(x)["epoch"] for x in read(fs, "digits-k3/metrics.jsonl").decode().splitlines()] == [1, 2, 3]
    state = torch.load(io.BytesIO(read(fs, "digits-k3/train/epoch_0003/state.pt")), weights_only=True)
    assert state["epoch"] == 3
    assert "train/epoch_0001/state.pt" not in bucket_files(fs, "digits-k3")  # Ray keeps the newest two

    # `rrdist evaluate` on the URI, from yet another working copy: its result lands in the bucket.
    env = {**os.environ, "RRDIST_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "rrdist", "evaluate", "linear", "--run", out, "--epochs", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(read(fs, "digits-k3/eval/linear-trained-digits.json"))
    assert f"{100 * result['test_accuracy']:.2f}%" in done.stdout and result["settings"]["epochs"] == 5

    # TensorBoard reads the run straight from the bucket (its S3 reader: boto3 + S3_ENDPOINT).
    script = ("import sys\nfrom tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer\n"
              "m = EventMultiplexer()\nm.AddRunsFromDirectory(sys.argv[1])\nm.Reload()\n"
              "for run, tags in sorted(m.Runs().items()):\n"
              "    for tag in sorted(tags['scalars']):\n"
              "        print(tag, sorted(e.step for e in m.Scalars(run, tag)))\n")
    tb_env = {**os.environ, "S3_ENDPOINT": f"http://{endpoint}", "AWS_ACCESS_KEY_ID": KEY,
              "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}
    shown = subprocess.run([sys.executable, "-c", script, "s3://runs/digits-k3/tb"], env=tb_env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.splitlines()
    assert "pretrain/loss [1, 2, 3]" in lines and "eval/linear_trained_digits [3]" in lines


@pytest.mark.usefixtures("ray_session")
def test_sweep_with_out_at_a_bucket(s3, digits_root, tmp_path):
    """Data, trials, their evaluations and records, Tune's state and the tables: all in the bucket."""
    import yaml

    from rrdist.tune.driver import run_sweep

    uri, fs, _ = s3
    space = tmp_path / "at_bucket.yaml"
    space.write_text(yaml.safe_dump({
        "name": "at_bucket", "fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 1, "batch_size": 64},
        "axes": {"K": {"grid": [2]}}, "seeds": 1, "trial": {"workers": 1, "cpus_per_worker": 1},
        "concurrency": 2, "evaluations": {"linear": {"epochs": 3}}}))
    import pyarrow.fs as pafs

    # Nothing shared but the bucket: the prepared data is there too, and each node copies it.
    pafs.copy_files(str(digits_root / "ffcv" / "digits"), "runs/data/ffcv/digits", destination_filesystem=fs)
    node_root = tmp_path / "node-data"
    where = run_sweep(space, root=str(node_root), out=uri("sweeps"), data_uri=uri("data"), log=lambda *a: None)
    assert where == uri("sweeps/at_bucket")
    files = bucket_files(fs, "sweeps/at_bucket")
    for name in ("K=2,seed=0",):
        record = json.loads(read(fs, f"sweeps/at_bucket/trials/{name}/trial.json"))
        assert record["status"] == "completed" and 0 < record["metrics"]["linear_acc"] <= 1
        result = json.loads(read(fs, f"sweeps/at_bucket/trials/{name}/eval/linear-trained-digits.json"))
        assert result["test_accuracy"] == record["metrics"]["linear_acc"]
        assert {f"trials/{name}/backbone.pt", f"trials/{name}/train/epoch_0001/state.pt"} <= set(files)
    assert {"sweep.yaml", "results.md", "results.csv", "trials.csv"} <= set(files)
    assert (node_root / "ffcv" / "digits" / "train.beton").is_file()  # staged from the bucket
    assert any(f.startswith("hparams/") for f in files) and any(f.endswith("tuner.pkl") for f in files)
    table = read(fs, "sweeps/at_bucket/results.md").decode()
    assert "| 2 |" in table and "| done |" in table

    # Resumed from the bucket alone: nothing is trained again, the records stay as they were.
    shutil.rmtree(os.environ["RRDIST_CACHE"], ignore_errors=True)
    before = read(fs, "sweeps/at_bucket/trials/K=2,seed=0/trial.json")
    run_sweep(space, root=str(node_root), out=uri("sweeps"), data_uri=uri("data"), resume=True,
              log=lambda *a: None)
    assert read(fs, "sweeps/at_bucket/trials/K=2,seed=0/trial.json") == before
    report = subprocess.run([sys.executable, "-m", "rrdist", "report", uri("sweeps/at_bucket")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and report.stdout == table
