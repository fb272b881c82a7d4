"""A resumed run's log: epochs after the checkpoint it resumes from are logged once, in
metrics.jsonl and in TensorBoard."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rrdist.storage import RunFolder
from rrdist.train.epoch_log import EpochLog


def epoch_line(epoch, loss):
    return {"epoch": epoch, "loss": loss, "views_per_s": 1.0, "epoch_time_s": 1.0, "steps": 1}


def loss_curve(tb):
    acc = EventAccumulator(str(tb))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars("pretrain/loss")]


def test_resume_forgets_epochs_after_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.local.mkdir(parents=True)
    first = EpochLog(run, 0, 5)
    for epoch in (1, 2, 3):  # the attempt that was cut off after logging epoch 3 (checkpoint at 2)
        first.write(epoch_line(epoch, 1.0 / epoch))
    first.close()
    with open(run.local / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # the killed attempt's half-written line
    assert loss_curve(run.local / "tb") == [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6))]

    again = EpochLog(run, 0, 5, start=2)
    again.write(epoch_line(3, 0.25))
    again.write(epoch_line(4, 0.2))
    again.close()
    logged = [json.loads(line) for line in (run.local / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["loss"]) for m in logged] == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.2)]
    assert loss_curve(run.local / "tb") == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.2)]


def test_a_fresh_start_and_other_ranks_leave_the_log_alone(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.local.mkdir(parents=True)
    lines = "".join(json.dumps(epoch_line(e, 1.0)) + "\n" for e in (1, 2, 3))
    (run.local / "metrics.jsonl").write_text(lines)
    EpochLog(run, 1, 5, start=1).close()  # rank 1 writes nothing
    assert (run.local / "metrics.jsonl").read_text() == lines
    EpochLog(run, 0, 5, start=3).close()  # nothing past the checkpoint: nothing to forget
    assert (run.local / "metrics.jsonl").read_text() == lines
