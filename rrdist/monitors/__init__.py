"""Monitor registry: a new monitor is one file plus one line here.

A run's monitors are those whose settings say they are enabled (`--online-probe`, `--knn-every N`).
The registry travels with a run (to a sweep's trials and to the training workers), so a monitor
registered at run time, by a test or a user's script, works as a shipped one does.
"""

from __future__ import annotations

from dataclasses import fields

from rrdist.monitors.base import Monitor, MonitorContext
from rrdist.monitors.knn import KnnMonitor
from rrdist.monitors.probe import OnlineProbe

MONITORS: dict[str, type[Monitor]] = {
    "probe": OnlineProbe,
    "knn": KnnMonitor,
}


def register(name: str, monitor: type[Monitor]) -> None:
    """Add a monitor at run time; its settings' names must be new."""
    taken = {f.name for cls in MONITORS.values() for f in fields(cls.Settings)}
    clash = [f.name for f in fields(monitor.Settings) if f.name in taken]
    if clash and MONITORS.get(name) is not monitor:
        raise ValueError(f"monitor {name}: setting {clash[0]} belongs to another monitor")
    MONITORS[name] = monitor


def adopt(registry: dict[str, type[Monitor]]) -> None:
    """Make this process's registry the one a run was started with (a trial's or a worker's process)."""
    for name, monitor in registry.items():
        MONITORS[name] = monitor


def monitor_keys() -> dict[str, str]:
    """Each monitor setting's name -> its monitor's name."""
    return {f.name: name for name, cls in MONITORS.items() for f in fields(cls.Settings)}


def figure_names() -> list[str]:
    """Every figure a monitor can give, in registry order."""
    return [figure for cls in MONITORS.values() for figure in cls.figures]


def build_monitors(settings: dict[str, object], context: MonitorContext) -> dict[str, Monitor]:
    """The enabled monitors of a run by name, from its settings per monitor name."""
    return {name: MONITORS[name](s, context) for name, s in settings.items() if s.enabled()}
