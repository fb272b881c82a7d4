"""Keep Ray's per-report INFO lines out of the user's terminal: rrdist prints its own epoch lines."""

import logging


def quiet_ray_logs() -> None:
    """Runs in every Ray worker process (a worker_process_setup_hook) and at the loop's start."""
    names = ["ray.train.v2._internal.execution.storage", "ray.train.v2.torch.train_loop_utils"]
    # Warns every few seconds when no dashboard runs to answer its state queries; harmless.
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    try:
        from ray.train.v2._internal.execution import context

        names.append(context.__file__)  # that module names its logger by file path
    except ImportError:
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_worker_process() -> None:
    """Ray's worker_process_setup_hook: quiet logs, SIGTERM turned into a checkpoint-and-stop for
    training workers (rrdist.train.interruptions), and a quicker view of the cluster's nodes."""
    from rrdist.train.elastic_view import fresh_node_view
    from rrdist.train.interruptions import install_stop_handler

    quiet_ray_logs()
    install_stop_handler()
    fresh_node_view()

