"""The Ray internals rrdist wraps are there, with the shapes it relies on.

rrdist wraps a few of Ray's internals (each wrapper keeps Ray's own behaviour when they are missing,
silently losing rrdist's): the elastic group's fresh node view, SIGTERM turned into a checkpoint,
Ray Train's console logging, the process group's rendezvous, and Ray Train's local mode. pyproject.toml
bounds Ray to the versions these were checked on; a Ray outside them fails here, loudly, instead."""

import inspect
import logging


def test_the_elastic_groups_node_view_can_be_refreshed():
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import _AutoscalingCoordinatorActor
    from ray.train.v2._internal.execution.scaling_policy.elastic import ElasticScalingPolicy

    from rrdist.train.elastic_view import NODE_VIEW_S, fresh_node_view

    assert isinstance(_AutoscalingCoordinatorActor.TICK_INTERVAL_S, (int, float))
    assert callable(ElasticScalingPolicy.make_decision_for_non_running_worker_group)
    params = inspect.signature(_AutoscalingCoordinatorActor.get_reserved_resources).parameters
    assert "recompute" in params  # the fresh look asks for it
    fresh_node_view()
    assert ElasticScalingPolicy.rrdist_fresh and _AutoscalingCoordinatorActor.TICK_INTERVAL_S <= NODE_VIEW_S


def test_rays_sigterm_handler_is_set_through_the_function_rrdist_wraps():
    import ray._private.utils as ray_utils
    import ray._private.worker as ray_worker

    from rrdist.train.sigterm import install_stop_handler

    assert callable(ray_utils.set_sigterm_handler)
    # Ray's worker installs its handler through that module attribute, after the setup hook ran.
    assert "set_sigterm_handler" in inspect.getsource(ray_worker)
    install_stop_handler()
    assert ray_utils.set_sigterm_handler.rrdist_wrapped


def test_ray_trains_logging_setup_and_logger_names_are_the_ones_quieted():
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.logging import LoggingManager

    from rrdist.train.logs import quiet_train_logging_setup

    for name in ("configure_controller_logger", "configure_worker_logger"):
        assert callable(getattr(LoggingManager, name))
    assert context.__file__
    quiet_train_logging_setup()
    assert LoggingManager.configure_worker_logger.rrdist_quiet
    import importlib

    for module in ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                   "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
                   "ray.train.v2.api.config", "ray.train.v2._internal.execution.train_fn_utils"):
        importlib.import_module(module)  # the loggers rrdist quiets are these modules'
    assert logging.getLogger("ray.train")


def test_the_process_group_backend_and_local_mode_rrdist_builds_on():
    from ray.train.torch.config import _TorchBackend
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert callable(_TorchBackend.on_start)
    assert "running_in_local_mode" in inspect.getsource(DataParallelTrainer.__init__)  # num_workers=0: in process
