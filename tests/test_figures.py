"""The sweep's pictures: accuracy against K and against gamma, as PNG files and TensorBoard images."""

import json

import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from rrdist.tune.report import write_report


def fake_sweep(folder, accuracy, gammas=(0, 2)):
    axes = {"K": {"grid": [2, 4, 8]}, "gamma": {"grid": list(gammas)}}
    spec = {"name": "kg", "fixed": {"dataset": "digits"}, "axes": axes, "seeds": [0, 1], "evaluations": {"linear": {}}}
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"spec": spec, "root": "data"}))
    for K in (2, 4, 8):
        for gamma in gammas:
            for seed in (0, 1):
                name = f"K={K},gamma={gamma},seed={seed}"
                config = {"method": "relational", "dataset": "digits", "backbone": "conv4", "K": K, "gamma": gamma,
                          "epochs": 3}
                record = {"trial": name, "axes": {"K": K, "gamma": gamma}, "seed": seed, "status": "completed",
                          "config": config, "metrics": {"loss": 0.5, "linear_acc": accuracy(K, gamma, seed)}}
                (folder / "trials" / name).mkdir(parents=True)
                (folder / "trials" / name / "trial.json").write_text(json.dumps(record))


def test_report_draws_accuracy_against_K_and_gamma(tmp_path):
    fake_sweep(tmp_path, lambda K, gamma, seed: 0.5 + 0.01 * K + 0.02 * gamma + 0.005 * seed)
    write_report(tmp_path)
    for name in ("linear-vs-K.png", "linear-vs-gamma.png"):
        with Image.open(tmp_path / "figures" / name) as picture:
            assert picture.size == (660, 480)  # 5.5 x 4 inches at 120 dpi
            colours = len(set(picture.convert("RGB").getdata()))
            assert colours > 50  # lines, bands and text, not an empty canvas
    tags = set()
    for f in (tmp_path / "figures").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            tags.update(v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "images")
    assert tags == {"sweep/linear_vs_K", "sweep/linear_vs_gamma"}


def test_only_the_axes_that_vary_are_drawn(tmp_path):
    fake_sweep(tmp_path, lambda K, gamma, seed: 0.5 + 0.01 * K, gammas=(2,))
    write_report(tmp_path)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["linear-vs-K.png"]
