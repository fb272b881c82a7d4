"""Synchronous successive halving: its rungs, its decisions against a written-out reference on
random curves, and the fates it reports (results.md, TensorBoard)."""

import json
import math
import random

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from rrdist.tune.halving import Fate, plan, rungs


def test_rungs_grow_by_the_reduction_factor_and_stop_before_the_last_epoch():
    assert rungs(1, 4, 10) == [1, 4]
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 16) == [2, 4, 8]
    assert rungs(1, 2.5, 20) == [1, 2, 6, 16]  # rounded, never repeated
    assert rungs(5, 3, 5) == [] and rungs(1, 2, 1) == []


def reference(points: dict[str, str], curves: dict[str, list[float]], rung_epochs, eta, mode):
    """Successive halving as the paper of the method tells it: every survivor trains to the rung,
    the points are ranked by their trials' mean there, the best ceil(n / eta) go on."""
    alive = sorted(points)
    stopped_at = {}
    for rung in rung_epochs:
        names = sorted({points[t] for t in alive})
        if len(names) <= 1:
            break
        means = np.array([np.mean([curves[t][rung - 1] for t in alive if points[t] == p]) for p in names])
        order = np.argsort(-means if mode == "max" else means, kind="stable")
        keep = {names[i] for i in order[:math.ceil(len(names) / eta)]}
        for t in alive:
            if points[t] not in keep:
                stopped_at[t] = rung
        alive = [t for t in alive if points[t] in keep]
    return stopped_at, set(alive)


@pytest.mark.parametrize("case", range(200))
def test_plan_matches_the_reference_on_random_curves(case):
    rng = random.Random(case)
    epochs = rng.randint(3, 30)
    eta = rng.choice([2, 3, 4, 2.5])
    rung_epochs = rungs(rng.randint(1, 3), eta, epochs)
    seeds = rng.randint(1, 3)
    points = {f"p{p},seed={s}": f"p{p}" for p in range(rng.randint(1, 12)) for s in range(seeds)}
    curves = {t: [rng.random() for _ in range(epochs)] for t in points}
    mode = rng.choice(["min", "max"])
    stopped_at, finishers = reference(points, curves, rung_epochs, eta, mode)
    values = {t: {r: curves[t][r - 1] for r in rung_epochs} for t in points}  # everyone reported every rung
    fates = plan(points, values, rung_epochs, eta, mode)
    assert {t for t, f in fates.items() if f == Fate("train", None)} == finishers
    assert {t: f.rung for t, f in fates.items() if f.state == "stop"} == stopped_at
    # A point is kept or stopped whole: its seeds share one fate.
    for p in set(points.values()):
        assert len({fates[t] for t in points if points[t] == p}) == 1


def test_a_rung_waits_for_every_trial_and_only_then_stops_anyone():
    points = {f"K={k}": f"K={k}" for k in (2, 4, 8, 16)}
    values = {"K=2": {1: 0.30}, "K=4": {1: 0.35}, "K=8": {1: 0.40}}  # K=16 has not reached epoch 1
    fates = plan(points, values, [1, 4], 2, "max")
    assert fates == {"K=2": Fate("wait", 1), "K=4": Fate("wait", 1), "K=8": Fate("wait", 1), "K=16": Fate("train", 1)}
    values["K=16"] = {1: 0.38}
    fates = plan(points, values, [1, 4], 2, "max")
    assert fates == {"K=2": Fate("stop", 1), "K=4": Fate("stop", 1), "K=8": Fate("train", 4), "K=16": Fate("train", 4)}
    values["K=8"][4] = 0.45  # K=8 reaches the next rung first: it waits for K=16
    assert plan(points, values, [1, 4], 2, "max")["K=8"] == Fate("wait", 4)
    values["K=16"][4] = 0.44
    fates = plan(points, values, [1, 4], 2, "max")
    assert fates["K=8"] == Fate("train", None) and fates["K=16"] == Fate("stop", 4)


def test_a_point_is_judged_by_the_mean_of_its_seeds_or_each_trial_alone():
    # Point A has one lucky seed; point B is better on average.
    values = {"A,seed=0": {1: 0.60}, "A,seed=1": {1: 0.30}, "B,seed=0": {1: 0.50}, "B,seed=1": {1: 0.48}}
    by_point = {t: t.split(",")[0] for t in values}
    fates = plan(by_point, values, [1], 2, "max")
    assert {t for t, f in fates.items() if f.state == "train"} == {"B,seed=0", "B,seed=1"}
    alone = {t: t for t in values}
    fates = plan(alone, values, [1], 2, "max")
    assert {t for t, f in fates.items() if f.state == "train"} == {"A,seed=0", "B,seed=0"}


def test_one_point_left_trains_to_the_end_without_waiting():
    values = {"A,seed=0": {1: 0.5}}
    fates = plan({"A,seed=0": "A", "A,seed=1": "A"}, values, [1, 3], 2, "max")
    assert set(fates.values()) == {Fate("train", None)}


def test_report_shows_each_trial_fate_in_results_and_tensorboard(tmp_path):
    from rrdist.tune.halving import LEDGER
    from rrdist.tune.records import sweep_trial, write_record
    from rrdist.tune.report import write_report
    from rrdist.tune.space import parse

    spec = parse({"fixed": {"dataset": "digits", "backbone": "conv4", "epochs": 3, "knn_every": 1},
                  "axes": {"K": {"grid": [2, 3, 4]}}, "seeds": 1,
                  "scheduler": {"hyperband": {"metric": "knn_acc", "mode": "max", "reduction_factor": 2}}})
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({"spec": spec.to_dict(), "root": "data"}))
    endings = {2: {"status": "stopped", "epoch": 1, "metrics": {"epoch": 1, "knn_acc": 0.31}},
               3: {"status": "completed", "metrics": {"epoch": 3, "loss": 0.5, "linear_acc": 0.4, "knn_acc": 0.4}},
               4: {"status": "interrupted", "epoch": 1, "metrics": {"epoch": 1, "knn_acc": 0.35}}}
    for K, ending in endings.items():
        trial = sweep_trial(spec, {"K": K, "seed": 0}, "t1", str(sweep_dir), "data")
        write_record(trial.run_dir, {**trial.record, **ending})
    ledger = {"metric": "knn_acc", "mode": "max", "rungs": [1, 2], "judge": "point", "reduction_factor": 2.0,
              "values": {"K=2,seed=0": {"1": 0.31}, "K=3,seed=0": {"1": 0.36, "2": 0.38}, "K=4,seed=0": {"1": 0.35}},
              "events": [{"trial": "K=2,seed=0", "event": "paused", "rung": 1, "epoch": 1, "knn_acc": 0.31},
                         {"trial": "K=3,seed=0", "event": "paused", "rung": 1, "epoch": 1, "knn_acc": 0.36},
                         {"trial": "K=4,seed=0", "event": "paused", "rung": 1, "epoch": 1, "knn_acc": 0.35},
                         {"trial": "K=2,seed=0", "event": "stopped", "rung": 1, "knn_acc": 0.31},
                         {"trial": "K=3,seed=0", "event": "resumed", "rung": 1},
                         {"trial": "K=3,seed=0", "event": "completed", "epoch": 3}], "end": True}
    (sweep_dir / LEDGER).write_text(json.dumps(ledger))
    table = write_report(sweep_dir)
    fates = {line.split(" | ")[0][3:-1]: line.rsplit(" | ", 1)[1][:-2] for line in table.splitlines()
             if line.startswith("| `K=")}
    assert fates == {"K=2,seed=0": "paused at epoch 1; stopped at epoch 1 (knn_acc 0.31)",
                     "K=3,seed=0": "paused at epoch 1; resumed; completed",
                     "K=4,seed=0": "paused at epoch 1; interrupted: `rrdist sweep --resume` continues"}
    assert "stopped early (hyperband): seed 0 at epoch 1 (knn_acc 0.31)" in table
    assert "| `K=3,seed=0` | 0.36 | 0.38 |" in table
    seen = {}
    for f in (sweep_dir / "fates").rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.tag == "fate/text_summary":
                    seen[f.parent.name] = value.tensor.string_val[0].decode()
                elif value.tag == "rung/knn_acc":
                    seen.setdefault((f.parent.name, "rungs"), []).append(event.step)
    assert seen["K=3,seed=0"] == fates["K=3,seed=0"] and seen["K=2,seed=0"] == fates["K=2,seed=0"]
    assert seen[("K=3,seed=0", "rungs")] == [1, 2]
