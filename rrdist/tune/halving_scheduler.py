"""The Tune scheduler of synchronous successive halving (see `rrdist.tune.halving` for the rule).

Trials enter paused and start only through `choose_trial_to_run`, `slots` at a time. A trial that
reaches a rung before the others is asked to halt: the scheduler creates its run folder's `.halt`,
the stop file its workers look at between steps; they save a checkpoint and end the Train run
(Ray Train frees their resources itself), and the trial reports `halted`, whereupon Tune pauses
it (its process ends). When the rung is full the plan stops the losers, and the winners start
again, their Train runs resuming from that checkpoint: the same views, the same steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from rrdist.storage import RunFolder, join
from rrdist.tune.halving import LEDGER, RUNG, Fate, halt_file, plan, read_ledger, rungs
from rrdist.tune.records import trial_name


class SynchronousHalving(FIFOScheduler):
    """A Tune trial scheduler. Trials enter paused and start only through `choose_trial_to_run`,
    which keeps at most `slots` of them running; the rung decisions pause, resume and stop them."""

    _supports_buffered_results = False  # every epoch's result on its own: a rung must not be skipped

    def __init__(self, metric: str, mode: str, grace_period: int, reduction_factor: float, epochs: int,
                 judge: str, axes: list[str], random_axes: bool, expected: int, slots: int, sweep_dir: str):
        super().__init__()
        self.judged, self.order, self.eta = metric, mode, reduction_factor
        self.rung_epochs = rungs(grace_period, reduction_factor, epochs)
        self.judge, self.axes, self.random_axes = judge, axes, random_axes
        self.expected, self.slots, self.sweep_dir = expected, slots, sweep_dir
        self.trials: dict[str, Any] = {}  # name -> Tune trial, in the order Tune added them
        self.values: dict[str, dict[int, float]] = {}  # name -> {rung epoch: metric}
        self.events: list[dict[str, Any]] = []
        self.failed: set[str] = set()
        self._loaded = False

    # -- who a trial is --------------------------------------------------------------------------

    def name(self, trial) -> str:
        axes = {a: trial.config[a] for a in self.axes}
        return trial_name(axes, int(trial.config["seed"]), trial.trial_id if self.random_axes else None)

    def group(self, name: str, trial) -> str:
        if self.judge == "trial" or self.random_axes:  # random draws: no two trials share a point
            return name
        return json.dumps({a: trial.config[a] for a in self.axes}, sort_keys=True, default=str)

    # -- the record on disk ----------------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        saved = read_ledger(RunFolder(self.sweep_dir))
        self.values, self.events = saved["values"], saved["events"]

    def _save(self) -> None:
        RunFolder(self.sweep_dir).write_text(LEDGER, yaml.safe_dump(
            {"metric": self.judged, "mode": self.order, "rungs": self.rung_epochs, "judge": self.judge,
             "reduction_factor": self.eta, "values": self.values, "events": self.events, "end": True},
            sort_keys=False))

    def _event(self, name: str, event: str, **extra) -> None:
        self.events.append({"trial": name, "event": event, **extra, "time": round(time.time(), 3)})
        print(f"[rrdist] halving: trial {name} {event}"
              + "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in extra.items()),
              flush=True)

    # -- decisions -------------------------------------------------------------------------------

    def fates(self) -> dict[str, Fate]:
        present = {n: t for n, t in self.trials.items() if n not in self.failed}
        if len(self.trials) < self.expected:  # a rung is decided over the whole sweep, never part of it
            first = self.rung_epochs[0] if self.rung_epochs else None
            return {n: Fate("wait" if self._reached(n) else "train", first) for n in present}
        return plan({n: self.group(n, t) for n, t in present.items()}, self.values, self.rung_epochs,
                    self.eta, self.order)

    def _reached(self, name: str) -> bool:
        done = self.values.get(name, {})
        return bool(self.rung_epochs) and self.rung_epochs[0] in done

    def _act(self, tune_controller, fates: dict[str, Fate], current=None) -> None:
        """Stop the paused trials the plan stops; the promoted ones start again through choose_trial_to_run."""
        for name, fate in fates.items():
            trial = self.trials[name]
            if trial is current or trial.status not in (Trial.PAUSED, Trial.PENDING):
                continue
            if fate.state == "stop":
                self._stop_event(name, fate.rung)
                self._save()
                tune_controller.stop_trial(trial)

    def _stop_event(self, name: str, rung: int) -> None:
        if not any(e["trial"] == name and e["event"] == "stopped" for e in self.events):
            self._event(name, "stopped", rung=rung, **{self.judged: self.values.get(name, {}).get(rung)})

    # -- Tune's hooks ----------------------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        name = self.name(trial)
        self.trials[name] = trial
        self.failed.discard(name)
        if trial.status == Trial.PENDING:
            trial.init_local_path()  # Tune's own folder, which a trial that never starts still needs
            trial.set_status(Trial.PAUSED)  # it starts when choose_trial_to_run picks it

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get("epoch")
        if result.get("reused") is not None or not isinstance(epoch, int):
            return TrialScheduler.CONTINUE  # a finished trial's summary, not an epoch
        name, halted = self.name(trial), bool(result.get("halted"))
        due = [r for r in self.rung_epochs if r <= epoch and r not in self.values.get(name, {})]
        if due and not halted and self.judged in result:
            for r in due:  # a skipped rung (a resumed run that went past it) takes this epoch's value
                self.values.setdefault(name, {})[r] = float(result[self.judged])
            self._save()
        fates = self.fates()
        fate = fates.get(name, Fate("train", None))
        self._act(tune_controller, fates, current=trial)
        if not halted and fate.state == "train" and (fate.rung is None or epoch < fate.rung):
            return TrialScheduler.CONTINUE
        if not halted and self._ask_to_halt(name):
            return TrialScheduler.CONTINUE  # it reports `halted` once its Train run has saved and ended
        if fate.state == "stop":
            self._stop_event(name, fate.rung)
            self._save()
            return TrialScheduler.STOP
        rung = fate.rung if fate.state == "wait" else max(self.values.get(name, {}), default=None)
        self._event(name, "paused", rung=rung, epoch=epoch,
                    **{self.judged: self.values.get(name, {}).get(rung)})
        self._save()
        return TrialScheduler.PAUSE  # promoted meanwhile: choose_trial_to_run starts it again

    def _set_pause(self, name: str, epoch: int | None) -> None:
        """Where the trial's Train run ends this time: at the rung it trains to (None: at its end)."""
        RunFolder(join(self.sweep_dir, "trials", name)).write_text(RUNG.name, json.dumps({"pause_epoch": epoch}))

    def _ask_to_halt(self, name: str) -> bool:
        """Ask the trial's Train run to checkpoint and end, so that Tune ends a trial with no training
        in flight (its workers' resources freed by Ray Train itself); False where no file can ask."""
        path = halt_file(self.sweep_dir, name)
        if path is None:
            return False
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
        return True

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        name = self.name(trial)
        if result.get("reused") is not None:  # its own last report: trained and evaluated
            if not any(e["trial"] == name and e["event"] in ("completed", "stopped") for e in self.events):
                self._event(name, "completed", epoch=result.get("epoch"))
                self._save()

    def on_trial_error(self, tune_controller, trial) -> None:
        self.failed.add(self.name(trial))
        self._act(tune_controller, self.fates())

    def choose_trial_to_run(self, tune_controller):
        self._load()
        running = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in self.trials.values())
        if running >= self.slots:
            return None
        fates = self.fates()
        self._act(tune_controller, fates)
        for name, trial in self.trials.items():
            fate = fates.get(name)
            if trial.status == Trial.PAUSED and fate is not None and fate.state == "train":
                if self._reached(name):
                    self._event(name, "resumed", rung=max(self.values[name]))
                    self._save()
                self._set_pause(name, fate.rung)
                return trial
        return None

    def debug_string(self) -> str:
        counts: dict[str, int] = {}
        for fate in self.fates().values():
            counts[fate.state] = counts.get(fate.state, 0) + 1
        return f"Synchronous halving at epochs {self.rung_epochs}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
