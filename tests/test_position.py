"""What a restart redid: rank 0's position line, the restart events, and the epoch sums carried
over to another worker count."""

import torch

from rrdist.train.position import Position, read_position, restart_event
from rrdist.train.step import EpochSums


def test_the_position_line_is_overwritten_in_place_and_read_back(tmp_path):
    assert read_position(tmp_path) is None
    position = Position(tmp_path, workers=3)
    position.at(12, 345678)
    position.at(2, 7)  # shorter numbers: nothing of the longer line may remain
    position.close()
    got = read_position(tmp_path)
    assert (got["epoch"], got["step"], got["workers"]) == (2, 7, 3) and got["time"] > 0
    (tmp_path / "position").write_text("half a li")
    assert read_position(tmp_path) is None  # damaged: no position, not an error


def test_restart_events():
    last = {"epoch": 3, "step": 17, "workers": 2, "time": 0.0}
    assert restart_event(None, 0, 0, 22, 0, 2) is None  # a first start
    assert restart_event({**last, "step": 10}, 3, 10, 22, 2, 2) is None  # nothing redone, same count
    killed = restart_event(last, 3, 12, 22, 2, 2)
    assert (killed["event"], killed["steps_redone"], killed["workers_before"]) == ("restart", 5, 2)
    across = restart_event({**last, "epoch": 4, "step": 3}, 3, 20, 22, 2, 3)  # back past an epoch's end
    assert (across["event"], across["steps_redone"], across["workers"]) == ("resize", 5, 3)
    ended = restart_event({**last, "step": 22}, 4, 0, 22, 2, 2)  # the last step of epoch 4 = epoch 5's start
    assert ended is None
    unknown = restart_event(None, 3, 0, 22, 4, 2)  # a resume on another count, no position line
    assert (unknown["event"], unknown["steps_redone"], unknown["stalled_s"]) == ("resize", None, None)


def test_epoch_sums_resumed_on_another_worker_count_give_the_fixed_count_figures():
    """Per step each worker adds its share of a metric (the workers' mean is the global figure) and
    a 1 to the steps; a checkpoint holds every worker's sums together. Steps 0-4 on 3 workers,
    5-9 on 2: the epoch's figures must be the mean over the 10 steps of the global figure."""
    names = ("loss",)
    figures = torch.rand(10, dtype=torch.float64)
    before = EpochSums(names, torch.device("cpu"))
    for step in range(5):
        for _ in range(3):
            before.add(figures[step], {"loss": figures[step]}, views=8)
    after = EpochSums(names, torch.device("cpu"))
    after.restore(before.sums.clone(), saved_workers=3, workers=2)
    for step in range(5, 10):
        for _ in range(2):
            after.add(figures[step], {"loss": figures[step]}, views=8)
    totals = after.totals()
    assert abs(totals["loss"] - float(figures.mean())) < 1e-12
    assert totals["steps"] == 20  # 10 steps, counted by each of the 2 workers
    same = EpochSums(names, torch.device("cpu"))
    same.restore(before.sums.clone(), saved_workers=3, workers=3)
    assert torch.equal(same.sums, before.sums)  # the same count: the sums as they were, bit for bit
