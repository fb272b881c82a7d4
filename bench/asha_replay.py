"""Replay ASHA on a finished FIFO sweep: which (grace period, reduction factor) would have saved
compute, and would it have kept the winner?

A FIFO sweep that ran the kNN monitor every epoch holds every trial's whole monitor curve, so
ASHA's decisions under any setting can be replayed without training again. The replay drives Ray
Tune's own ASHA bracket (`ray.tune.schedulers.async_hyperband._Bracket`, the object that
`ASHAScheduler` consults on each result) with the recorded results, in the order a cluster with
`--slots` concurrent trials would have produced them: trials start in the sweep's order when a slot
frees, and each epoch lasts its recorded `epoch_time_s` plus `--epoch-overhead` (monitor,
checkpoint, report); a trial pays `--start-overhead` to start (Ray Train's worker group).

Synchronous halving (`--scheduler hyperband`, rrdist's `scheduler: {hyperband: ...}`) replays
through rrdist's own rule (`rrdist.tune.halving.plan`): its decisions do not depend on the order
results arrive in. `--scheduler stock-hyperband` replays Ray Tune's `HyperBandScheduler` as shipped
(max_t = epochs + 1, as for ASHA): its brackets, filled in launch order, and their halving.

Printed per setting: trial-epochs spent (and the share of FIFO's), the trials run to the end, and
whether FIFO's winner (by the sweep's final linear accuracy) is among them. Replays are
predictions; `bench/asha_study.py` measures the chosen setting for real. SWEEP_DIR is a FIFO sweep
folder, or a study's JSON (bench/results/asha_study_*.json: its FIFO curves).

    python bench/asha_replay.py SWEEP_DIR [--scheduler asha] [--grace 1 2] [--reduction 2 3 4] [--slots 2]
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


def load_study(path: Path, axes=("K", "gamma")) -> list[dict]:
    """A study JSON's FIFO trials with their kNN curves, in the order Tune's grid launched them
    (the last axis slowest: K=2/gamma 0, K=4/gamma 0, K=8/gamma 0, K=2/gamma 1, ...)."""
    fifo = json.loads(path.read_text())["fifo"]
    trials = []
    for name, curve in fifo["knn_acc"].items():
        values = dict(part.split("=") for part in name.split(","))
        trials.append({"trial": name, "order": tuple(float(values[a]) for a in reversed(axes)),
                       "epochs": [{"knn_acc": v / 100, "epoch_time_s": 0.0} for v in curve],
                       "metrics": {"linear_acc": fifo["linear_acc"][name] / 100}})
    return sorted(trials, key=lambda t: t["order"])


def replay_halving(trials: list[dict], metric: str, mode: str, grace: int, reduction: float) -> dict:
    """rrdist's synchronous halving: one bracket of every trial, judged at its rungs by `plan`."""
    from rrdist.tune.halving import plan, rungs

    epochs = max(len(t["epochs"]) for t in trials)
    rung_epochs = rungs(grace, reduction, epochs)
    values = {t["trial"]: {r: t["epochs"][r - 1][metric] for r in rung_epochs} for t in trials}
    fates = plan({t["trial"]: t["trial"] for t in trials}, values, rung_epochs, reduction, mode)
    spent = {name: epochs if f.state == "train" else f.rung for name, f in fates.items()}
    return {"trial_epochs": sum(spent.values()), "rungs": rung_epochs,
            "finished": [n for n, f in fates.items() if f.state == "train"], "epochs": spent}


def replay_stock_hyperband(trials: list[dict], metric: str, mode: str, reduction: float) -> dict:
    """Ray Tune's HyperBandScheduler as shipped: trials fill its brackets in launch order; each
    bracket halves its own trials at its own milestones; a trial reaching max_t is stopped there."""
    from ray.tune.schedulers import HyperBandScheduler

    epochs = max(len(t["epochs"]) for t in trials)
    scheduler = HyperBandScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs + 1,
                                   reduction_factor=reduction)
    class Fake:  # what the scheduler reads of a trial; hashable, as Tune's trials are
        def __init__(self, trial_id):
            self.trial_id, self.status = trial_id, "PAUSED"

    fakes = {t["trial"]: Fake(t["trial"]) for t in trials}
    for fake in fakes.values():
        scheduler.on_trial_add(None, fake)
    sign = 1.0 if mode == "max" else -1.0
    spent = {}
    for band in scheduler._hyperbands:
        for bracket in (b for b in band if b is not None):
            live = [t.trial_id for t in bracket.current_trials()]
            while live:
                milestone = min(int(bracket._cumul_r), epochs)
                for name in live:
                    spent[name] = milestone
                    curve = next(t for t in trials if t["trial"] == name)["epochs"]
                    bracket.update_trial_stats(fakes[name], {"epoch": milestone, metric: curve[milestone - 1][metric]})
                if milestone >= epochs or bracket._halves == 0:
                    break  # the last rung: these run to the end (or are stopped at max_t)
                good, bad = bracket.successive_halving(metric, sign)
                for t in bad:
                    bracket.cleanup_trial(t)
                live = [t.trial_id for t in good]
    finished = [n for n, e in spent.items() if e >= epochs]
    return {"trial_epochs": sum(spent.values()), "finished": finished, "epochs": spent,
            "brackets": [[len(b._all_trials), b._r0] for band in scheduler._hyperbands for b in band if b is not None]}


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
    parser.add_argument("--scheduler", default="asha", choices=["asha", "hyperband", "stock-hyperband"])
    parser.add_argument("--metric", default="knn_acc")
    parser.add_argument("--mode", default="max", choices=["max", "min"])
    parser.add_argument("--grace", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reduction", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--start-overhead", type=float, default=8.0)
    parser.add_argument("--epoch-overhead", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    source = Path(args.sweep_dir)
    trials = load_study(source) if source.suffix == ".json" else load(source)
    fifo = sum(len(t["epochs"]) for t in trials)
    winner = max(trials, key=lambda t: t["metrics"]["linear_acc"])["trial"]
    print(f"FIFO: {len(trials)} trials, {fifo} trial-epochs, winner {winner}")
    rows = []
    for grace in args.grace:
        for reduction in args.reduction:
            if args.scheduler == "hyperband":
                r = replay_halving(trials, args.metric, args.mode, grace, reduction)
            elif args.scheduler == "stock-hyperband":
                r = replay_stock_hyperband(trials, args.metric, args.mode, reduction)
            else:
                r = replay(trials, args.metric, args.mode, grace, reduction, args.slots,
                           args.start_overhead, args.epoch_overhead)
            r.update(grace=grace, reduction=reduction, share=round(r["trial_epochs"] / fifo, 3),
                     keeps_winner=winner in r["finished"])
            rows.append(r)
            print(f"grace {grace} reduction {reduction:g}: {r['trial_epochs']} trial-epochs "
                  f"({100 * r['share']:.0f}% of FIFO), to the end: {', '.join(r['finished'])}; "
                  f"winner kept: {r['keeps_winner']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"scheduler": args.scheduler, "fifo_trial_epochs": fifo, "winner": winner,
                                               "replays": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
