"""Replay ASHA on a finished FIFO sweep: which (grace period, reduction factor) would have saved
compute, and would it have kept the winner?

A FIFO sweep that ran the kNN monitor every epoch holds every trial's whole monitor curve, so
ASHA's decisions under any setting can be replayed without training again. The replay drives Ray
Tune's own ASHA bracket (`ray.tune.schedulers.async_hyperband._Bracket`, the object that
`ASHAScheduler` consults on each result) with the recorded results, in the order a cluster with
`--slots` concurrent trials would have produced them: trials start in the sweep's order when a slot
frees, and each epoch lasts its recorded `epoch_time_s` plus `--epoch-overhead` (monitor,
checkpoint, report); a trial pays `--start-overhead` to start (Ray Train's worker group).

Printed per setting: trial-epochs spent (and the share of FIFO's), the trials run to the end, and
whether FIFO's winner (by the sweep's final linear accuracy) is among them. Replays are
predictions; `bench/asha_study.py` measures the chosen setting for real.

    python bench/asha_replay.py SWEEP_DIR [--grace 1 2] [--reduction 2 3 4] [--slots 2]
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path
from types import SimpleNamespace


def load(sweep_dir: Path) -> list[dict]:
    """The sweep's trials (as `asha_study.trials` reads them) in the order Tune launched them."""
    from asha_study import trials  # bench/ is on the path when this script runs

    by_name = trials(sweep_dir)
    # Tune's own folders, run_trial_<id>_<index>_<params>_<time>, say the order it launched them in.
    launched = {name: int(folder.name.split("_")[3]) for folder in sweep_dir.glob("run_trial_*")
                for name in by_name if f"_{name}_" in folder.name}
    return sorted(by_name.values(), key=lambda t: launched[t["trial"]])


def replay(trials: list[dict], metric: str, mode: str, grace: int, reduction: float, slots: int,
           start_overhead: float, epoch_overhead: float) -> dict:
    """Run Ray's ASHA bracket over the recorded curves; max_t as rrdist's driver sets it (epochs + 1)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    epochs = max(len(t["epochs"]) for t in trials)
    bracket = _Bracket(min_t=grace, max_t=epochs + 1, reduction_factor=reduction, s=0)
    sign = 1.0 if mode == "max" else -1.0  # ASHAScheduler compares rewards in "max" form
    queue = list(range(len(trials)))
    events: list[tuple[float, int, int]] = []  # (time, trial, epoch just finished)
    spent = [0] * len(trials)

    def start(i: int, now: float) -> None:
        first = trials[i]["epochs"][0]["epoch_time_s"] + epoch_overhead
        heapq.heappush(events, (now + start_overhead + first, i, 1))

    for _ in range(min(slots, len(queue))):
        start(queue.pop(0), 0.0)
    finished = []
    while events:
        now, i, epoch = heapq.heappop(events)
        spent[i] = epoch
        value = sign * trials[i]["epochs"][epoch - 1][metric]
        go_on = bracket.on_result(SimpleNamespace(trial_id=str(i)), epoch, value) == "CONTINUE"
        if go_on and epoch < len(trials[i]["epochs"]):
            step = trials[i]["epochs"][epoch]["epoch_time_s"] + epoch_overhead
            heapq.heappush(events, (now + step, i, epoch + 1))
            continue
        if go_on:
            finished.append(i)
        if queue:
            start(queue.pop(0), now)
    return {"trial_epochs": sum(spent), "finished": [trials[i]["trial"] for i in finished],
            "epochs": {t["trial"]: n for t, n in zip(trials, spent)}, "wall_s": round(now, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--metric", default="knn_acc")
    parser.add_argument("--mode", default="max", choices=["max", "min"])
    parser.add_argument("--grace", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reduction", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--start-overhead", type=float, default=8.0)
    parser.add_argument("--epoch-overhead", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    trials = load(Path(args.sweep_dir))
    fifo = sum(len(t["epochs"]) for t in trials)
    winner = max(trials, key=lambda t: t["metrics"]["linear_acc"])["trial"]
    print(f"FIFO: {len(trials)} trials, {fifo} trial-epochs, winner {winner}")
    rows = []
    for grace in args.grace:
        for reduction in args.reduction:
            r = replay(trials, args.metric, args.mode, grace, reduction, args.slots,
                       args.start_overhead, args.epoch_overhead)
            r.update(grace=grace, reduction=reduction, share=round(r["trial_epochs"] / fifo, 3),
                     keeps_winner=winner in r["finished"])
            rows.append(r)
            print(f"grace {grace} reduction {reduction:g}: {r['trial_epochs']} trial-epochs "
                  f"({100 * r['share']:.0f}% of FIFO), to the end: {', '.join(r['finished'])}; "
                  f"winner kept: {r['keeps_winner']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"fifo_trial_epochs": fifo, "winner": winner, "replays": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
