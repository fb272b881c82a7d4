"""--data-uri: each node copies the shared .beton files once, verified, and refetches a damaged copy."""

import shutil

import pytest

from rrdist.methods import make_config
from rrdist.data.beton import load_manifest
from rrdist.data.staging import stage
from rrdist.errors import DataError

QUIET = dict(log=lambda *a: None)


@pytest.fixture
def shared(digits_root, tmp_path):
    remote = tmp_path / "bucket"
    shutil.copytree(digits_root / "ffcv", remote / "ffcv")
    return remote


def test_stage_copies_verifies_reuses_and_refetches(shared, tmp_path):
    local = tmp_path / "node"
    said = []
    manifest = stage(f"file://{shared}", "digits", local, log=said.append)
    assert len(said) == 2  # train and test copied
    assert load_manifest("digits", local)["splits"] == manifest["splits"]  # sizes and checksums hold
    beton = local / "ffcv" / "digits" / "train.beton"
    mtime = beton.stat().st_mtime_ns

    said.clear()
    stage(f"file://{shared}", "digits", local, log=said.append)
    assert said == [] and beton.stat().st_mtime_ns == mtime  # a valid copy is reused

    data = bytearray(beton.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, other bytes
    beton.write_bytes(bytes(data))
    stage(f"file://{shared}", "digits", local, log=said.append)
    assert said == [f"staging file://{shared}/ffcv/digits/train.beton -> {beton}"]
    assert beton.read_bytes() == (shared / "ffcv" / "digits" / "train.beton").read_bytes()


def test_damaged_remote_copy_is_refused(shared, tmp_path):
    remote_beton = shared / "ffcv" / "digits" / "test.beton"
    remote_beton.write_bytes(remote_beton.read_bytes()[:-10])
    with pytest.raises(DataError, match="does not match its manifest"):
        stage(f"file://{shared}", "digits", tmp_path / "node", **QUIET)
    assert not (tmp_path / "node" / "ffcv" / "digits" / "test.beton").exists()  # nothing half-written kept


def test_missing_remote_data(tmp_path):
    with pytest.raises(DataError, match="no prepared digits data"):
        stage(f"file://{tmp_path}", "digits", tmp_path / "node", **QUIET)
    with pytest.raises(DataError, match="cannot open --data-uri"):
        stage("nosuchscheme://x/y", "digits", tmp_path / "node", **QUIET)


@pytest.mark.usefixtures("ray_session")
def test_pretraining_reads_a_data_uri(shared, tmp_path):
    from rrdist.eval.linear import LinearSettings, evaluate_linear
    from rrdist.train.trainer import pretrain

    local = tmp_path / "node"
    cfg = make_config(dataset="digits", root=str(local), data_uri=f"file://{shared}", K=2, epochs=1,
                         workers=2, out=str(tmp_path / "run"))
    result = pretrain(cfg, **QUIET)
    assert result.metrics["epoch"] == 1
    assert (local / "ffcv" / "digits" / "train.beton").is_file()
    assert evaluate_linear(tmp_path / "run", settings=LinearSettings(epochs=1), **QUIET)["n_test"] == 360
