"""Keep Ray's bookkeeping out of the user's terminal: rrdist prints its own lines (the run, its epochs,
its end); Ray's show when they are warnings or errors the user must act on.

- The driver (`quiet_local_ray_start`, with `ray.init(logging_level=WARNING)` in `init_ray`): no
  "Started a local Ray instance", and no notice that token authentication is on for rrdist's
  private local Ray (the token and its checks stay as Ray sets them up).
- Every Ray process of the job (`setup_worker_process`, Ray's worker_process_setup_hook): no INFO
  from Ray Train on the console ("Requesting resources", "Started training worker group", "Setting
  up process group", "A run snapshot was found" on a resume, ...); Ray Train still writes them to its
  log files in the session folder (/tmp/ray/session_*/logs/train).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from rrdist.train.when_imported import when_imported

RAY_TRAIN = "ray.train"
# Warns every few seconds when no dashboard runs to answer its state queries; harmless.
PG_CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
# Logs a warning with a GetTimeoutError traceback whenever the autoscaling coordinator takes over 5 s to
# answer (a loaded machine); the request only matters on an autoscaling cluster and is sent again every 20 s.
AUTOSCALING_CLIENT = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
AUTH_SETUP = "ray._private.authentication.authentication_token_setup"
TRAIN_CONTEXT = "ray.train.v2._internal.execution.context"
TRAIN_LOGGING = "ray.train.v2._internal.logging"


def quiet_ray_logs() -> None:
    """Runs in every Ray worker process (a worker_process_setup_hook), after Ray Train configures its
    loggers (which resets these), and at the loop's start."""
    names = ["ray.train.v2._internal.execution.storage", "ray.train.v2.torch.train_loop_utils"]
    for name in (PG_CLEANER, AUTOSCALING_CLIENT):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    when_imported(TRAIN_CONTEXT, quiet_by_file)


def quiet_by_file(module) -> None:
    """Ray Train's context module names its logger by its file's path."""
    logging.getLogger(module.__file__).setLevel(logging.WARNING)


class BelowWarning(logging.Filter):
    """Drops Ray Train's records under WARNING (on the console handler it is put on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == RAY_TRAIN or record.name.startswith(RAY_TRAIN + ".")
        return not own or record.levelno >= logging.WARNING


def quiet_train_console() -> None:
    """After Ray Train's controller or worker sets up its `ray.train` logger (a dictConfig: a console
    handler and log files, levels reset): its console shows WARNING and up, the log files keep all."""
    quiet_ray_logs()
    for handler in logging.getLogger(RAY_TRAIN).handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, BelowWarning) for f in handler.filters):
            handler.addFilter(BelowWarning())


def quiet_train_logging_setup() -> None:
    """Ray Train (2.60) configures its loggers in its controller actor and in each worker
    (LoggingManager.configure_controller_logger / configure_worker_logger), after this hook has run:
    quiet the console again right after. Another Ray version without these keeps its own setup."""
    when_imported(TRAIN_LOGGING, quiet_after_configure)


def quiet_after_configure(module) -> None:
    manager = getattr(module, "LoggingManager", None)
    for name in ("configure_controller_logger", "configure_worker_logger"):
        original = getattr(manager, name, None)
        if original is None or getattr(original, "rrdist_quiet", False):
            continue

        def configure(context, _original=original):
            _original(context)
            quiet_train_console()

        configure.rrdist_quiet = True
        setattr(manager, name, staticmethod(configure))


def quiet_local_mode() -> None:
    """Ray Train's local mode (`--in-process`) logs at INFO that it runs locally and every report's metrics;
    rrdist prints its own epoch lines."""
    for name in ("ray.train.v2.api.config", "ray.train.v2._internal.execution.train_fn_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def quiet_local_ray_start():
    """Around `ray.init` of rrdist's private local Ray: Ray's notice that token authentication is on
    (Ray's default; it stays on) tells the user of a private Ray on 127.0.0.1 nothing to act on."""
    auth = logging.getLogger(AUTH_SETUP)
    before = auth.level
    auth.setLevel(logging.ERROR)
    try:
        yield
    finally:
        auth.setLevel(before)


def pin_cluster_address() -> None:
    """Ray's State API, which Ray Train's placement-group cleaner polls from its own actor, finds its
    cluster by $RAY_ADDRESS, else by looking for a Ray on this machine: with two there (two rrdist
    commands at once, each with its private Ray) it fails ("Found multiple active Ray instances"),
    the cleaner's thread ends with a traceback, and it no longer frees a dead run's resources.
    This process's own cluster is the one to ask."""
    if os.environ.get("RAY_ADDRESS"):
        return
    try:
        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # not connected (not a Ray worker): Ray's own lookup
        pass


def setup_worker_process() -> None:
    """Ray's worker_process_setup_hook: quiet logs, the process's own cluster for Ray's State API,
    SIGTERM turned into a checkpoint-and-stop for training workers (rrdist.train.interruptions), and
    a quicker view of the cluster's nodes."""
    from rrdist.train.elastic_view import fresh_node_view
    from rrdist.train.sigterm import install_stop_handler

    # Ray Train's INFO lines where no LoggingManager sets up its logger (a sweep trial's process, which
    # starts the Train run): its console handler is Ray's, of the `ray` logger.
    logging.getLogger(RAY_TRAIN).setLevel(logging.WARNING)
    quiet_ray_logs()
    quiet_train_logging_setup()
    pin_cluster_address()
    install_stop_handler()
    fresh_node_view()
