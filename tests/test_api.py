"""rrdist as a library: the public API used as a notebook would, and an exported backbone loaded by a
process that never imports rrdist."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.ray


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory, ray_session):
    """What a notebook does first: prepare digits, pretrain 2 epochs, evaluate, all through `rrdist.*`."""
    import rrdist

    work = tmp_path_factory.mktemp("notebook")
    manifest = rrdist.prepare_data("digits", root=work / "data", log=quiet)
    run = rrdist.pretrain(dataset="digits", root=str(work / "data"), epochs=2, K=2, batch_size=64,
                          out=str(work / "runs" / "nb"), log=quiet)
    linear = rrdist.evaluate(run.run_dir, "linear", epochs=5, log=quiet)
    return work, manifest, run, linear


def test_a_notebook_pretrains_evaluates_and_embeds_with_the_evaluations_features(notebook_run):
    import rrdist

    work, manifest, run, linear = notebook_run
    assert isinstance(run, rrdist.PretrainResult) and run.run_dir == (work / "runs" / "nb").resolve()
    assert run.metrics["epoch"] == 2 and run.resumed is False
    assert 0.0 <= linear["test_accuracy"] <= 1.0 and linear["dataset"] == "digits"

    net = rrdist.load_backbone(run.run_dir)
    assert isinstance(net, torch.nn.Module) and not net.training
    assert net.transform.size == manifest["image_size"] and list(net.transform.mean) == manifest["mean"]
    assert net.settings["K"] == 2 and net.settings["epochs"] == 2 and net.epochs == 2
    images, labels = rrdist.images("digits", "test", root=work / "data", count=40)
    assert images.dtype == torch.uint8 and images.shape == (40, manifest["image_size"], manifest["image_size"], 3)
    with torch.no_grad():
        features = net(net.transform(images))
    # The linear evaluation's own features of the test split (cached in the run folder), same order.
    from rrdist.data.features import load_feature_files

    evaluated, evaluated_labels = load_feature_files(next((run.run_dir / "features").glob("digits-test-*")))
    assert torch.equal(labels, evaluated_labels[:40])
    assert torch.allclose(features, evaluated[:40], atol=1e-5, rtol=1e-5)

    # The same from a lone copy of backbone.pt (no run folder, no data beside it), and channels-first input.
    lone = work / "elsewhere" / "weights.pt"
    lone.parent.mkdir()
    shutil.copy(run.run_dir / "backbone.pt", lone)
    copy = rrdist.load_backbone(lone)
    with torch.no_grad():
        assert torch.equal(copy(copy.transform(images.permute(0, 3, 1, 2))), features)


def test_api_errors_are_one_exception_type_with_the_commands_message(notebook_run, tmp_path):
    import rrdist

    work, _, _, _ = notebook_run
    with pytest.raises(rrdist.RrdistError) as raised:
        rrdist.pretrain(dataset="digits", root=str(work / "data"), epochs=0, out=str(tmp_path / "bad"), log=quiet)
    cli = subprocess.run([sys.executable, "-m", "rrdist", "pretrain", "--dataset", "digits", "--root", str(work / "data"),
                          "--epochs", "0", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.strip() == f"rrdist: error: {raised.value}"
    assert not (tmp_path / "bad").exists()
    with pytest.raises(rrdist.RrdistError, match="does not exist"):
        rrdist.load_backbone(tmp_path / "nothing-here")
    with pytest.raises(rrdist.RrdistError, match="unknown evaluation"):
        rrdist.evaluate(work / "runs" / "nb", "accuracy")
    with pytest.raises(rrdist.RrdistError, match="not a setting"):
        rrdist.evaluate(work / "runs" / "nb", "linear", epoch=3)
    with pytest.raises(rrdist.RrdistError, match="'per_klass' is not a setting of this evaluation: use one of"):
        rrdist.evaluate(work / "runs" / "nb", "retrieval", per_klass=3)


FRESH = textwrap.dedent("""
    import json, sys, torch
    exported, script, images, out = sys.argv[1:5]
    saved = torch.load(exported, weights_only=True)
    net = torch.jit.load(script).eval()
    x = torch.load(images, weights_only=True).float() / 255.0  # uint8 [N, 3, H, W]
    mean = torch.tensor(saved["input"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(saved["input"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = net((x - mean) / std)
    torch.save({"features": features, "keys": sorted(saved["state_dict"]), "settings": saved["settings"]}, out)
    print(json.dumps({"rrdist_imported": any(m == "rrdist" or m.startswith("rrdist.") for m in sys.modules)}))
""")


def test_an_exported_backbone_loads_in_a_process_that_never_imports_rrdist(notebook_run, tmp_path):
    import rrdist

    work, _, run, linear = notebook_run
    target = tmp_path / "export" / "digits-conv4.pt"
    done = subprocess.run([sys.executable, "-m", "rrdist", "export", "--run", str(run.run_dir), "--to", str(target)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script, card = target.with_suffix(".torchscript.pt"), target.with_suffix(".md")
    assert script.is_file() and card.is_file()
    text = card.read_text()
    assert "conv4 pretrained with relational on digits" in text and f"{100 * linear['test_accuracy']:.2f}%" in text

    net = rrdist.load_backbone(run.run_dir)
    images, _ = rrdist.images("digits", "test", root=work / "data", count=16)
    torch.save(images.permute(0, 3, 1, 2).contiguous(), tmp_path / "images.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(target), str(script), str(tmp_path / "images.pt"),
                            str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == {"rrdist_imported": False}
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        expected = net(net.transform(images))
    assert torch.allclose(got["features"], expected, atol=1e-5, rtol=1e-5)
    assert got["keys"] == sorted(net.state_dict()) and got["settings"]["backbone"] == "conv4"

    # Exporting onto existing files is refused in one line, and they are left as they were.
    before = {p.name: p.read_bytes() for p in target.parent.iterdir()}
    again = subprocess.run([sys.executable, "-m", "rrdist", "export", "--run", str(run.run_dir), "--to", str(target)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists already" in again.stderr
    assert {p.name: p.read_bytes() for p in target.parent.iterdir()} == before


IN_PROCESS = textwrap.dedent("""
    import sys
    import ray
    import rrdist
    run = rrdist.pretrain(dataset="digits", root=sys.argv[1], epochs=2, K=2, batch_size=64, out=sys.argv[2],
                          in_process=True, log=lambda *a: None)
    print("ray started:", ray.is_initialized(), "epoch", run.metrics["epoch"])
""")


def test_a_run_in_the_calling_process_starts_no_ray_and_is_the_run_on_one_worker(notebook_run, tmp_path, monkeypatch):
    """Ray Train's local mode (`in_process=True`): the training function runs in the caller's process,
    no Ray starts, checkpoints land in the run folder, and every step's loss is the one-worker run's."""
    import rrdist

    work, _, _, _ = notebook_run
    trace = tmp_path / "trace" / "{run}"
    env = {**os.environ, "RRDIST_TRACE": str(trace)}
    alone = subprocess.run([sys.executable, "-c", IN_PROCESS, str(work / "data"), str(tmp_path / "alone")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "ray started: False epoch 2" in alone.stdout
    assert "Running in local mode" not in alone.stdout + alone.stderr  # Ray Train's INFO lines stay quiet
    assert sorted(p.name for p in (tmp_path / "alone" / "train").iterdir()) == ["epoch_0002"]  # the newest kept
    monkeypatch.setenv("RRDIST_TRACE", str(trace))
    rrdist.pretrain(dataset="digits", root=str(work / "data"), epochs=2, K=2, batch_size=64,
                    out=str(tmp_path / "worker"), log=quiet)  # one Ray Train worker on the session's Ray
    for epoch in (1, 2):
        steps = [json.loads((tmp_path / "trace" / name / f"epoch{epoch}-rank0.json").read_text())
                 for name in ("alone", "worker")]
        assert [s["loss"] for s in steps[0]] == [s["loss"] for s in steps[1]] and len(steps[0]) == 22
        assert [s["images"] for s in steps[0]] == [s["images"] for s in steps[1]]
    lines = [[json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
              if "event" not in line] for name in ("alone", "worker")]
    assert lines[0] == lines[1] and len(lines[0]) == 2
