"""SIGTERM in a Ray worker process: a checkpoint and a stop while a training loop runs there,
Ray's own handling otherwise. Kept free of torch and Ray Train: Ray's setup hook installs it in
every Ray process of a run, most of which never train (rrdist.train.interruptions acts on STOP).
"""

from __future__ import annotations

import threading

STOP = threading.Event()  # set by SIGTERM while a training loop in this process watches for it
WATCHING = threading.Event()  # a training loop runs in this process


def install_stop_handler() -> None:
    """In a Ray worker process (its setup hook): SIGTERM sets STOP while a training loop watches
    for it, and otherwise does what Ray's own handler does (end the worker).

    Ray installs its handler after the setup hook has run, through `set_sigterm_handler`; that
    function is wrapped here so that ours comes first. Should a Ray version not call it, SIGTERM
    ends the worker as before, and the run continues from its latest checkpoint all the same."""
    try:
        import ray._private.utils as ray_utils
    except ImportError:
        return
    original = ray_utils.set_sigterm_handler
    if getattr(original, "rrdist_wrapped", False):
        return

    def set_sigterm_handler(handler):
        def on_sigterm(signum, frame):
            if WATCHING.is_set():
                STOP.set()
            else:
                handler(signum, frame)

        original(on_sigterm)

    set_sigterm_handler.rrdist_wrapped = True
    ray_utils.set_sigterm_handler = set_sigterm_handler
