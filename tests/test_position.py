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


def _checkpoints(tmp_path, names):
    """A run folder whose train/ holds a checkpoint of each name, its epoch and step told by the name."""
    from rrdist.storage import RunFolder
    from rrdist.train.checkpoint import save_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for name in names:
        epoch, _, step = name.removeprefix("epoch_").partition("_step_")
        (tmp_path / "train" / name).mkdir(parents=True)
        save_state(tmp_path / "train" / name, model, optimizer, int(epoch), {}, step=int(step or 0))
    return RunFolder(tmp_path)


def test_a_restart_takes_a_checkpoint_written_after_rays_latest(tmp_path, capsys):
    """A worker that died right after its report wrote a whole checkpoint Ray never registered: the
    restart continues from it, not from Ray's older one (fewer steps redone)."""
    from ray.train import Checkpoint

    from rrdist.train.resume import resume_state

    run = _checkpoints(tmp_path, ["epoch_0001", "epoch_0001_step_000004", "epoch_0001_step_000008"])
    rays = Checkpoint.from_directory(str(tmp_path / "train" / "epoch_0001_step_000004"))
    state = resume_state(rays, run, announce=True)
    assert (state["epoch"], state["step"]) == (1, 8)
    assert "epoch_0001_step_000008" in capsys.readouterr().out
    # A newer one that does not read is passed over: Ray's is taken, and nothing is said.
    (tmp_path / "train" / "epoch_0001_step_000008" / "state.pt").write_bytes(b"cut")
    state = resume_state(rays, run, announce=True)
    assert (state["epoch"], state["step"]) == (1, 4) and capsys.readouterr().out == ""
    # Ray's own unreadable: the newest readable other one, with the reason in one line.
    (tmp_path / "train" / "epoch_0001_step_000004" / "state.pt").write_bytes(b"cut")
    state = resume_state(rays, run, announce=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "unreadable" in said and "epoch_0001 " in said
