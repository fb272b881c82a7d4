"""A table of user mistakes across every command: each is one line naming the fix, exit status 2,
no traceback, and the run, sweep and data folders involved are left exactly as they were.

Everything here is refused before Ray starts, so the table runs without a Ray cluster.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rrdist.cli import main
from rrdist.methods import make_config
from rrdist.models import build_backbone
from rrdist.models.backbone_file import save_backbone


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders with a digest of its bytes (and every folder), to compare."""
    seen = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_root):
    """A data root, a finished run (with an earlier linear result), a sweep folder and a space file."""
    base = tmp_path_factory.mktemp("user-errors")
    root = base / "data"
    shutil.copytree(digits_root, root)
    run = base / "run"
    run.mkdir()
    cfg = make_config(dataset="digits", root=str(root), backbone="conv4", epochs=1, out=str(run))
    (run / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    save_backbone(run, build_backbone("conv4"), cfg.to_dict(), 1)
    assert main(["evaluate", "linear", "--run", str(run), "--epochs", "2"]) == 0  # the result to protect
    (base / "a-file").write_text("not a folder\n")
    space = {"name": "grid", "fixed": {"dataset": "digits", "epochs": 1, "batch_size": 64},
             "axes": {"K": {"grid": [2, 3]}}, "evaluations": {"linear": {"epochs": 1}}}
    (base / "space.yaml").write_text(yaml.safe_dump(space))
    return {"base": base, "root": root, "run": run, "space": space}


def space_file(world, **changes) -> str:
    """A copy of the good space with some blocks replaced (a value None removes the key)."""
    space = {**world["space"], **changes}
    path = world["base"] / f"space-{hashlib.sha256(repr(changes).encode()).hexdigest()[:8]}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in space.items() if v is not None}))
    return str(path)


def binary_file(world, data: bytes) -> str:
    path = world["base"] / f"bytes-{hashlib.sha256(data).hexdigest()[:8]}.yaml"
    path.write_bytes(data)
    return str(path)


def settings_file(world, text: str) -> str:
    path = world["base"] / f"settings-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text)
    return str(path)


def pretrain(world, *flags):
    return ["pretrain", "--dataset", "digits", "--root", str(world["root"]), "--out", str(world["base"] / "new-run"),
            *flags]


def evaluate(world, name, *flags):
    return ["evaluate", name, "--run", str(world["run"]), *flags]


def asha(**settings):
    return {"asha": {"metric": "loss", **settings}}


def hyperband(**settings):
    return {"hyperband": {"metric": "loss", **settings}}


def long_fixed(world, **more):
    """The good space's settings, trained long enough for a rung (3 epochs)."""
    return {**world["space"]["fixed"], "epochs": 3, **more}


# (name, argv from the world, a fragment the one line must hold)
CASES = [
    # pretraining: paths, values, settings files
    ("out is a file", lambda w: pretrain(w)[:-2] + ["--out", str(w["base"] / "a-file")], "is a file"),
    ("out under a file", lambda w: pretrain(w)[:-2] + ["--out", str(w["base"] / "a-file" / "run")], "lies under the file"),
    ("root is a file", lambda w: ["pretrain", "--dataset", "digits", "--root", str(w["base"] / "a-file"), "--out",
                                  str(w["base"] / "new-run")], "is a file"),
    ("batch larger than the data", lambda w: pretrain(w, "--batch-size", "5000"), "more than the 1437 training images"),
    ("probe lr negative", lambda w: pretrain(w, "--online-probe", "--probe-lr", "-1"), "probe learning rate must be > 0"),
    ("knn neighbours zero", lambda w: pretrain(w, "--knn-every", "1", "--knn-k", "0"), "kNN neighbours must be at least 1"),
    ("knn interval negative", lambda w: pretrain(w, "--knn-every", "-2"), "kNN interval must be >= 0"),
    ("config is a folder", lambda w: pretrain(w, "--config", str(w["base"])), "is a folder, not a YAML file"),
    ("epochs a fraction", lambda w: pretrain(w, "--config", settings_file(w, "epochs: 1.9\n")), "'epochs'"),
    ("K a fraction", lambda w: pretrain(w, "--config", settings_file(w, "K: 2.7\n")), "must be an int"),
    ("interval a flag", lambda w: pretrain(w, "--config", settings_file(w, "checkpoint_every: true\n")),
     "must be an int"),
    ("flag a number", lambda w: pretrain(w, "--config", settings_file(w, "sync_bn: 1\n")), "must be a bool"),
    ("settings a list", lambda w: pretrain(w, "--config", settings_file(w, "[1, 2]\n")), "must hold a mapping"),
    ("bad flag value", lambda w: pretrain(w, "--K", "x"), "invalid int value"),
    ("unknown flag", lambda w: pretrain(w, "--views", "3"), "unrecognized arguments"),
    # data
    ("image size negative", lambda w: ["data", "prepare", "digits", "--root", str(w["root"]), "--image-size", "-4"],
     "--image-size must be between"),
    ("data root a file", lambda w: ["data", "prepare", "digits", "--root", str(w["base"] / "a-file")], "is a file"),
    ("unknown dataset", lambda w: ["data", "prepare", "mnist", "--root", str(w["root"])], "mnist"),
    # evaluations: options checked before anything is read or written
    ("linear epochs zero", lambda w: evaluate(w, "linear", "--epochs", "0"),
     "--epochs must be at least 1"),
    ("linear epochs negative", lambda w: evaluate(w, "linear", "--epochs", "-3"),
     "--epochs must be at least 1"),
    ("linear batch zero", lambda w: evaluate(w, "linear", "--batch-size", "0"),
     "--batch-size must be at least 1"),
    ("linear lr negative", lambda w: evaluate(w, "linear", "--lr", "-1"), "--lr must be > 0"),
    ("device unknown", lambda w: evaluate(w, "linear", "--device", "foo"), "not a device"),
    ("device without a GPU", lambda w: evaluate(w, "linear", "--device", "cuda"),
     "no GPU is visible here"),
    ("finetune epochs zero", lambda w: evaluate(w, "finetune", "--epochs", "0"),
     "--epochs must be at least 1"),
    ("finetune batch zero", lambda w: evaluate(w, "finetune", "--batch-size", "0"),
     "--batch-size must be at least 1"),
    ("retrieval per class zero", lambda w: evaluate(w, "retrieval", "--per-class", "0"),
     "--per-class must be at least 1"),
    ("tsne max points zero", lambda w: evaluate(w, "tsne", "--max-points", "0"),
     "--max-points must be at least 2"),
    ("not a run folder", lambda w: ["evaluate", "linear", "--run", str(w["root"])], "not a run folder"),
    ("missing run option", lambda w: ["evaluate", "linear"], "--run"),
    ("unknown init", lambda w: evaluate(w, "linear", "--init", "zeros"), "invalid choice"),
    # search spaces: a wrong type, a value out of range, a block of the wrong shape
    ("grace period a word", lambda w: ["sweep", space_file(w, scheduler=asha(grace_period="five"))], "must be an int"),
    ("reduction a list", lambda w: ["sweep", space_file(w, scheduler=asha(reduction_factor=[1]))], "must be a float"),
    ("grace period zero", lambda w: ["sweep", space_file(w, scheduler=asha(grace_period=0))], "at least 1"),
    ("reduction below 2", lambda w: ["sweep", space_file(w, scheduler=asha(reduction_factor=1.5))], "at least 2"),
    ("metric nobody reports", lambda w: ["sweep", space_file(w, scheduler=asha(metric="top5"))],
     "must be a per-epoch metric"),
    ("unknown ASHA key", lambda w: ["sweep", space_file(w, scheduler={"asha": {"patience": 3}})], "not an ASHA setting"),
    ("ASHA not a mapping", lambda w: ["sweep", space_file(w, scheduler={"asha": 5})], "must be a mapping"),
    ("ASHA rung past the epochs", lambda w: ["sweep", space_file(w, scheduler=asha(grace_period=1))],
     "not before the last epoch (1)"),
    ("unknown scheduler", lambda w: ["sweep", space_file(w, scheduler={"bohb": {}})], "fifo, {asha: {...}} or {hyperband"),
    ("hyperband unknown key", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler={"hyperband": {"brackets": 2}})],
     "'scheduler.hyperband.brackets' is not a hyperband setting"),
    ("hyperband grace a word", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(grace_period="five"))],
     "must be an int"),
    ("hyperband reduction below 2", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(reduction_factor=1.5))],
     "at least 2"),
    ("hyperband reduction infinite", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(reduction_factor=float("inf")))],
     "must be a finite number"),
    ("hyperband mode wrong", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(mode="up"))],
     "must be min or max"),
    ("hyperband judge wrong", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(judge="seeds"))],
     "must be point or trial"),
    ("hyperband metric unknown", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(metric="top5"))],
     "must be a per-epoch metric"),
    ("hyperband metric no trial reports", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(metric="knn_acc"))],
     "knn_acc is not reported by the trials"),
    ("hyperband rung past the epochs", lambda w: ["sweep", space_file(w, fixed=long_fixed(w), scheduler=hyperband(grace_period=3))],
     "not before the last epoch (3)"),
    ("hyperband with its own checkpoints", lambda w: ["sweep", space_file(w, fixed=long_fixed(w, checkpoint_every=2), scheduler=hyperband())],
     "is set by hyperband"),
    ("hyperband over several lengths", lambda w: ["sweep", space_file(w, fixed={"dataset": "digits", "batch_size": 64},
                                                                       axes={"epochs": {"grid": [3, 4]}}, scheduler=hyperband())],
     "needs one length for every trial"),
    ("trial not a mapping", lambda w: ["sweep", space_file(w, trial=[1, 2])], "must be a mapping"),
    ("trial workers zero", lambda w: ["sweep", space_file(w, trial={"workers": 0})], "at least 1"),
    ("trial workers backwards", lambda w: ["sweep", space_file(w, trial={"workers": "3-1"})], "1 <= MIN <= MAX"),
    ("trial workers past M", lambda w: ["sweep", space_file(w, trial={"workers": "1-300"})],
     "cannot give each of 300 workers an image"),
    ("evaluation not a mapping", lambda w: ["sweep", space_file(w, evaluations={"linear": 5})], "must be a mapping"),
    ("evaluation setting a word", lambda w: ["sweep", space_file(w, evaluations={"linear": {"epochs": "many"}})],
     "must be an int"),
    ("evaluation epochs zero", lambda w: ["sweep", space_file(w, evaluations={"finetune": {"epochs": 0}})],
     "at least 1"),
    ("evaluation lr zero", lambda w: ["sweep", space_file(w, evaluations={"linear": {"lr": 0}})], "must be > 0"),
    ("seeds a flag", lambda w: ["sweep", space_file(w, seeds=True)], "'seeds'"),
    ("space missing", lambda w: ["sweep", str(w["base"] / "nope.yaml")], "does not exist"),
    # demo
    ("demo workers 65", lambda w: ["demo", "--workers", "65", "--out", str(w["base"] / "demo")], "pass --workers 2"),
    ("demo out a file", lambda w: ["demo", "--out", str(w["base"] / "a-file")], "is a file"),
    # folders that cannot be written although the permission bits say they can (/sys, even as root)
    ("out cannot be written", lambda w: pretrain(w)[:-2] + ["--out", "/sys/rrdist-run"], "cannot be written"),
    ("sweep out cannot be written", lambda w: ["sweep", space_file(w), "--root", str(w["root"]), "--out",
                                               "/sys/rrdist-sweeps"], "cannot be written"),
    ("data root cannot be written", lambda w: ["data", "prepare", "digits", "--root", "/sys/rrdist-data"],
     "cannot be written"),
    ("demo out cannot be written", lambda w: ["demo", "--out", "/sys/rrdist-demo"], "cannot be written"),
    # intervals that would mean never
    ("checkpoint minutes infinite", lambda w: pretrain(w, "--checkpoint-minutes", "inf"),
     "--checkpoint-minutes must be a finite number (got inf): pass 0 to checkpoint at epoch ends only"),
    ("check every 10^23 steps", lambda w: pretrain(w, "--check-every", str(10 ** 23)), "pass at most 100000"),
    ("check every infinite in a file", lambda w: pretrain(w, "--config", settings_file(w, "check_every: .inf\n")),
     "must be a finite number"),
    # files that are not UTF-8 text
    ("settings not UTF-8", lambda w: pretrain(w, "--config", binary_file(w, b"K: 2\n\xff\xfe\n")), "is not UTF-8 text"),
    ("space not UTF-8", lambda w: ["sweep", binary_file(w, b"name: x\n\xff\n")], "is not UTF-8 text"),
    # stop files that could never ask for a stop ($RRDIST_STOP_FILE, as cluster/slurm.sbatch sets it)
    ("stop file a folder", lambda w: pretrain(w), "is a folder: name a file", lambda w: {"RRDIST_STOP_FILE": str(w["base"])}),
    ("stop file under a file", lambda w: pretrain(w), "could never be created",
     lambda w: {"RRDIST_STOP_FILE": str(w["base"] / "a-file" / "stop")}),
    ("stop file in no folder", lambda w: pretrain(w), "does not exist): name a file in an existing folder",
     lambda w: {"RRDIST_STOP_FILE": str(w["base"] / "nowhere" / "stop")}),
    ("stop file there already", lambda w: pretrain(w), "exists already, so the run would stop at once",
     lambda w: {"RRDIST_STOP_FILE": str(w["base"] / "a-file")}),
    # a submitted job runs in a temporary copy of the working folder: a relative --out would be lost
    ("submitted job writes into its copy", lambda w: pretrain(w)[:-2] + ["--out", "runs/submitted-run"],
     "temporary copy of the working folder", lambda w: {"RRDIST_SUBMITTED": "1"}),
]


@pytest.mark.parametrize("name,argv,fragment,env", [(*c, None)[:4] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_changes_nothing(world, capsys, monkeypatch, name, argv, fragment, env):
    for key, value in (env(world) if env else {}).items():
        monkeypatch.setenv(key, value)
    args = argv(world)
    before = snapshot(world["root"], world["run"], world["base"] / "new-run", world["base"] / "runs")
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (name, err)
    assert len(err.splitlines()) == 1 and err.startswith("rrdist: error: "), err
    assert "Traceback" not in err and fragment in err, err
    assert snapshot(world["root"], world["run"], world["base"] / "new-run", world["base"] / "runs") == before
    assert not (world["base"] / "new-run").exists() and not (world["base"] / "demo").exists()


def test_the_table_covers_every_command(world):
    commands = {case[1](world)[0] for case in CASES}
    assert commands == {"pretrain", "data", "evaluate", "sweep", "demo"} and len(CASES) >= 45


def test_an_evaluation_of_other_settings_keeps_the_earlier_result(world, capsys):
    """A valid evaluation with other settings writes a file of its own; the same settings replace."""
    run = world["run"]
    first = json.loads((run / "eval" / "linear-trained-digits.json").read_text())
    assert first["settings"]["epochs"] == 2
    assert main(["evaluate", "linear", "--run", str(run), "--epochs", "1"]) == 0
    assert json.loads((run / "eval" / "linear-trained-digits.json").read_text()) == first
    (other,) = [p for p in (run / "eval").glob("linear-trained-digits-*.json")]
    assert json.loads(other.read_text())["settings"]["epochs"] == 1
    assert main(["evaluate", "linear", "--run", str(run), "--epochs", "2"]) == 0  # the same settings: replaced
    again = json.loads((run / "eval" / "linear-trained-digits.json").read_text())
    assert again["settings"] == first["settings"] and again["test_accuracy"] == first["test_accuracy"]
    assert sorted(p.name for p in (run / "eval").glob("linear-*.json")) == sorted(["linear-trained-digits.json", other.name])


def test_a_damaged_result_is_kept_beside_the_new_one(world, capsys):
    run = damaged_copy(world, "damaged-result")
    (run / "eval" / "linear-trained-digits.json").write_bytes(b'{"settings": {"epo')
    before = set((run / "eval").glob("linear-trained-digits-*.json"))
    assert main(["evaluate", "linear", "--run", str(run), "--epochs", "2"]) == 0
    assert (run / "eval" / "linear-trained-digits.json").read_bytes() == b'{"settings": {"epo'  # for its owner to restore
    (new,) = set((run / "eval").glob("linear-trained-digits-*.json")) - before
    assert json.loads(new.read_text())["settings"]["epochs"] == 2


def damaged_copy(world, name: str) -> Path:
    copy = world["base"] / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(world["run"], copy)
    return copy


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_backbone_file_without_weights_or_of_another_backbone(world, capsys):
    run = damaged_copy(world, "no-weights")
    torch.save({"config": {}, "epoch": 1}, run / "backbone.pt")
    assert "holds no backbone weights" in one_line_error(capsys, ["evaluate", "linear", "--run", str(run)])
    run = damaged_copy(world, "other-backbone")
    text = (run / "config.yaml").read_text().replace("backbone: conv4", "backbone: resnet8")
    (run / "config.yaml").write_text(text)
    before = snapshot(run)
    assert "not a resnet8" in one_line_error(capsys, ["evaluate", "linear", "--run", str(run)])
    assert snapshot(run) == before


@pytest.mark.parametrize("content,why", [("[1, 2]", "is not a JSON object"), ('{"format_version": 2}', "lacks a valid"),
                                         ("{not json", "is not valid JSON")])
def test_a_damaged_manifest_names_the_fix(world, capsys, content, why):
    root = world["base"] / "damaged-data"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(world["root"], root)
    (root / "ffcv" / "digits" / "manifest.json").write_text(content)
    before = snapshot(root)
    err = one_line_error(capsys, ["pretrain", "--dataset", "digits", "--root", str(root), "--out",
                                  str(world["base"] / "new-run")])
    assert why in err and f"rrdist data prepare digits --root {root} --force`" in err, err
    assert snapshot(root) == before and not (world["base"] / "new-run").exists()


def write_sweep_folder(world, name: str, sweep_yaml: str, record: str | None = None) -> Path:
    folder = world["base"] / "sweeps" / name
    (folder / "trials" / "K=2,seed=0").mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(sweep_yaml)
    if record is not None:
        (folder / "trials" / "K=2,seed=0" / "trial.json").write_text(record)
    return folder


@pytest.mark.parametrize("sweep_yaml", ["spec: [unclosed\n", "- 1\n- 2\n", "root: /data\n"])
def test_a_damaged_sweep_folder_is_one_line_for_report_and_resume(world, capsys, sweep_yaml):
    folder = write_sweep_folder(world, "damaged", sweep_yaml)
    before = snapshot(folder)
    assert "sweep.yaml is damaged" in one_line_error(capsys, ["report", str(folder)])
    space = space_file(world, name="damaged")
    err = one_line_error(capsys, ["sweep", space, "--out", str(folder.parent), "--root", str(world["root"]),
                                  "--resume"])
    assert "sweep.yaml is damaged" in err
    assert snapshot(folder) == before


@pytest.mark.parametrize("name,data,why", [("tuner.pkl", b"\x80\x05\x95 cut", "not a whole pickle"),
                                           ("basic-variant-state-2026-12-01_10-00-00.json", b"\x80\x05\x95", "not a whole"),
                                           ("experiment_state-2026-12-01_10-00-00.json", b'{"trial_data": [', "not JSON")])
def test_damaged_tune_state_is_one_line_for_a_resume(world, capsys, name, data, why):
    """Tune reads its own files back when a sweep resumes: each is checked to be whole first."""
    from rrdist.tune.space import load

    space = space_file(world, name=f"tuned-{name[:5]}")
    folder = write_sweep_folder(world, f"tuned-{name[:5]}", yaml.safe_dump({"spec": load(space).to_dict(),
                                                               "root": str(world["root"].resolve())}))
    (folder / name).write_bytes(data)
    before = snapshot(folder)
    err = one_line_error(capsys, ["sweep", space, "--out", str(folder.parent), "--root", str(world["root"]), "--resume"])
    assert f"{name} is damaged ({why}" in err and "remove the Tune files" in err, err
    assert snapshot(folder) == before


def test_a_damaged_trial_record_is_left_out_of_the_report(world, capsys):
    from rrdist.tune.space import load

    spec = load(space_file(world, name="records"))
    sweep_yaml = yaml.safe_dump({"spec": spec.to_dict(), "root": str(world["root"])})
    folder = write_sweep_folder(world, "records", sweep_yaml, record='{"trial": "K=2,seed=0", "status": ')
    assert main(["report", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "trial.json is damaged: left out" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "| K |" in captured.out
    (folder / "trials" / "K=2,seed=0" / "trial.json").write_bytes(b'{"trial": "\xff"}')  # not UTF-8 either
    assert main(["report", str(folder)]) == 0
    assert "trial.json is damaged: left out" in capsys.readouterr().err


def test_a_bad_scheduler_leaves_no_sweep_folder(world, capsys):
    """The space, its scheduler included, is checked before sweep.yaml is written: fixing the space
    and running again works, instead of a folder that 'holds a sweep of another space'."""
    out = world["base"] / "runs" / "sweeps"
    bad = space_file(world, name="fixme", scheduler=asha(grace_period=0))
    assert "at least 1" in one_line_error(capsys, ["sweep", bad, "--out", str(out), "--root", str(world["root"])])
    assert not (out / "fixme").exists()


SNAPSHOT = "train/checkpoint_manager_snapshot.json"


def ray_snapshot(**changes) -> bytes:
    from importlib.metadata import version

    return json.dumps({"ray_version": version("ray"), "checkpoint_results": [], **changes}).encode()


@pytest.mark.parametrize("name,data,why", [
    (SNAPSHOT, ray_snapshot()[:30], "not JSON"),
    (SNAPSHOT, ray_snapshot(ray_version="2.0.0"), "written by Ray 2.0.0"),
    (SNAPSHOT, ray_snapshot(checkpoint_results=[{"checkpoint_dir_name": "epoch_0001", "metrics": {}}]),
     "names the checkpoint train/epoch_0001, which is not there"),
    (SNAPSHOT, ray_snapshot(checkpoint_results=[{"checkpoint_dir_name": 1}]), "is int 1, not str"),
    ("metrics.jsonl", b'{"epoch": 1}\n\xff\xfe\n', "not UTF-8"),
    ("metrics.jsonl", b'{"epoch": 1}\nnot json\n{"epoch": 2}\n', "line 2 is not JSON"),
    ("metrics.jsonl", b'{"loss": 0.5}\n', "line 1 lacks 'epoch'"),
    ("config.yaml", b"K: 2\n\xff\n", "not UTF-8"),
])
def test_a_damaged_file_of_a_run_stops_its_resume_in_one_line(world, capsys, name, data, why):
    """What a resume reads back is checked before anything is written: the message names the file
    and what to do, and the folder is left byte for byte, its config.yaml too (a new --epochs)."""
    run = damaged_copy(world, "damaged-run")
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_bytes(data)
    before = snapshot(run)
    err = one_line_error(capsys, ["pretrain", "--dataset", "digits", "--root", str(world["root"]), "--backbone",
                                  "conv4", "--epochs", "2", "--out", str(run)])
    assert f"{run}/{name} is damaged" in err and why in err and ("remove it" in err or "new --out" in err), err
    assert snapshot(run) == before


def test_a_half_written_last_metrics_line_is_no_damage(world, capsys):
    """A killed writer leaves its last line without a newline: that is what resumes are for."""
    from rrdist.kept import read
    from rrdist.storage import RunFolder
    from rrdist.train.epoch_log import METRICS

    run = damaged_copy(world, "half-line")
    (run / "metrics.jsonl").write_bytes(b'{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    assert read(RunFolder(run), METRICS) == [{"epoch": 1, "loss": 0.5}]


LEDGER = {"metric": "loss", "mode": "min", "rungs": [1], "judge": "point", "reduction_factor": 3.0,
          "values": {"K=2,seed=0": {1: 0.5}},
          "events": [{"trial": "K=2,seed=0", "event": "paused", "rung": 1, "epoch": 1, "loss": 0.5, "time": 1.0}],
          "end": True}  # as the scheduler writes it


def ledger_text(**changes) -> str:
    return yaml.safe_dump({**LEDGER, **changes}, sort_keys=False)


@pytest.mark.parametrize("ledger,why", [
    ("values: [unclosed\n", "not YAML"), ("values: {a: {x: 1}}\n", "lacks 'metric'"), ("events: [1, 2]\n", "lacks"),
    (ledger_text(reduction_factor="two"), "'reduction_factor' is str 'two', not int or float"),
    (ledger_text(rungs=5), "'rungs' is not a list"),
    (ledger_text().split("events:")[0], "lacks 'events'"),  # cut short, still YAML
    (ledger_text().replace("end: true\n", ""), "lacks 'end'"),  # cut short inside its last list
    (ledger_text(values={"K=2,seed=0": {2: 0.5}}), "at epoch 2, which is not a rung ([1])"),
    (ledger_text(events=[{"trial": "K=2,seed=0", "event": "waved"}]), "'waved', not one of"),
    ("\xff\xfe".encode("latin-1"), "is not UTF-8 text"),
])
def test_a_damaged_halving_record_is_one_line_for_report_and_resume(world, capsys, ledger, why):
    """halving.yaml holds the rung decisions a resume continues from: damaged, it is refused before
    anything runs, and left as it is; the same file undamaged is read."""
    from rrdist.tune.space import load

    space = space_file(world, name="halved", fixed={**world["space"]["fixed"], "epochs": 3},
                       scheduler={"hyperband": {"metric": "loss"}})
    folder = write_sweep_folder(world, "halved", yaml.safe_dump({"spec": load(space).to_dict(),
                                                                 "root": str(world["root"].resolve())}))
    (folder / "halving.yaml").write_text(ledger_text())
    assert main(["report", str(folder)]) == 0 and "paused at epoch 1" in capsys.readouterr().out
    (folder / "halving.yaml").write_bytes(ledger if isinstance(ledger, bytes) else ledger.encode())
    before = snapshot(folder)
    err = one_line_error(capsys, ["report", str(folder)])
    assert "halving.yaml is damaged" in err and why in err, err
    err = one_line_error(capsys, ["sweep", space, "--out", str(folder.parent), "--root", str(world["root"]),
                                  "--resume"])
    assert "halving.yaml is damaged" in err and "new --out" in err
    assert snapshot(folder) == before


FULL_JOB = {"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "node1", "SLURM_CPUS_ON_NODE": "2",
            "SLURM_RESTART_COUNT": "0"}
SLURM_CASES = [  # (name, environment set on top of one without SLURM_*, a fragment the one line must hold)
    ("no job", {}, "SLURM_JOB_ID is not set): submit this script with sbatch"),
    ("half a job", {"SLURM_JOB_ID": "123"}, "SLURM_JOB_NODELIST is not set: run this script through sbatch"),
    ("job id a word", {"SLURM_JOB_ID": "abc", "SLURM_JOB_NODELIST": "node1"}, "SLURM_JOB_ID=abc is not a positive integer"),
    ("job id zero", {"SLURM_JOB_ID": "0", "SLURM_JOB_NODELIST": "node1"}, "SLURM_JOB_ID=0 is not a positive integer"),
    ("node list empty", {"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is not set"),
    ("port a word", {**FULL_JOB, "RRDIST_RAY_PORT": "x"}, "RRDIST_RAY_PORT=x is not a port in 1024..65000"),
    ("port too high", {**FULL_JOB, "RRDIST_RAY_PORT": "65534"}, "RRDIST_RAY_PORT=65534 is not a port"),
    ("cpus a word", {**FULL_JOB, "SLURM_CPUS_ON_NODE": "two"}, "SLURM_CPUS_ON_NODE=two is not an integer"),
    ("restart count two lines", {**FULL_JOB, "SLURM_RESTART_COUNT": "1\n2"}, "SLURM_RESTART_COUNT="),
    ("no ray in the venv", {**FULL_JOB, "RRDIST_VENV": "/nonexistent-venv"}, "or set RRDIST_VENV"),
]


@pytest.mark.parametrize("name,env,fragment", SLURM_CASES, ids=[c[0] for c in SLURM_CASES])
def test_the_slurm_script_outside_a_job_is_one_line(tmp_path, name, env, fragment):
    """cluster/slurm.sbatch refuses an environment it cannot run in before it writes anything: no
    job folder, no token file, no SLURM command reached, one line and exit status 2."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    jobs, tools, reached = tmp_path / "jobs", tmp_path / "tools", tmp_path / "reached"
    tools.mkdir()
    for tool in ("scontrol", "srun", "sbatch"):  # stand-ins that record being reached
        (tools / tool).write_text(f"#!/bin/sh\necho {tool} >> '{reached}'\nexit 1\n")
        (tools / tool).chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RRDIST_"))}
    clean.update(PATH=f"{tools}{os.pathsep}{clean.get('PATH', '')}", RRDIST_VENV=sys.prefix,
                 RRDIST_SLURM_DIR=str(jobs))
    result = subprocess.run(["bash", "cluster/slurm.sbatch", "pretrain", "--dataset", "digits"], cwd=repo,
                            env={**clean, **env}, capture_output=True, text=True, timeout=60)
    err = result.stderr.strip()
    assert result.returncode == 2, (name, result.stdout, result.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("rrdist: error: ") and fragment in err, err
    assert "unbound variable" not in result.stdout + result.stderr and result.stdout == "", result.stdout
    assert snapshot(jobs) == {} and not jobs.exists() and not reached.exists()
