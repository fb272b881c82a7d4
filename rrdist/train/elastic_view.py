"""An elastic group sized from the cluster as it is now, not as it was up to 20 s ago.

Ray Train (2.60) sizes an elastic group from the resources its AutoscalingCoordinator reserves,
and the coordinator re-reads the cluster's nodes every 20 s. So after a node is lost the group
was restarted at its old size and waited for a worker that could not start (until Ray's start
timeout, minutes), and a new node was seen up to 20 s late. In the run's Ray processes (the
worker_process_setup_hook) this makes the coordinator look every 2 s, and a group that is not
running ask for a fresh look before it chooses its size. Another Ray version without these
internals keeps its own behaviour.
"""

from __future__ import annotations

NODE_VIEW_S = 2.0
COORDINATOR = "ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator"
ELASTIC_POLICY = "ray.train.v2._internal.execution.scaling_policy.elastic"


def fresh_node_view() -> None:
    """From the setup hook: each class is changed when its module is loaded (the coordinator's actor,
    Ray Train's controller), not imported into every Ray process."""
    from rrdist.train.when_imported import when_imported

    when_imported(COORDINATOR, tick_often)
    when_imported(ELASTIC_POLICY, decide_from_a_fresh_view)


def tick_often(module) -> None:
    actor = getattr(module, "_AutoscalingCoordinatorActor", None)
    if actor is not None:
        actor.TICK_INTERVAL_S = min(actor.TICK_INTERVAL_S, NODE_VIEW_S)


def decide_from_a_fresh_view(module) -> None:
    policy = getattr(module, "ElasticScalingPolicy", None)
    if policy is None or getattr(policy, "rrdist_fresh", False):
        return
    original = policy.make_decision_for_non_running_worker_group

    def decide(self):
        import ray

        try:  # a tick of the coordinator now: the nodes alive at this moment
            ray.get(self._autoscaling_coordinator.get_reserved_resources.remote(self._requester_id, recompute=True),
                    timeout=10)
        except Exception:  # the cached view, as Ray would use
            pass
        self._latest_reserved_resources_query_time = float("-inf")  # read the fresh reservation
        return original(self)

    policy.make_decision_for_non_running_worker_group = decide
    policy.rrdist_fresh = True
