"""rrdist.train.when_imported: a function runs on a module right after its import, never before, once."""

import subprocess
import sys
import textwrap

from rrdist.train.when_imported import when_imported


def test_a_function_waits_for_its_modules_import_and_then_runs_once(tmp_path, monkeypatch):
    (tmp_path / "rr_waited_for.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def note(module):
        seen.append(module.VALUE)
        module.VALUE += 10

    when_imported("rr_waited_for", note)
    when_imported("rr_waited_for", note)  # the same function is kept once
    assert seen == [] and "rr_waited_for" not in sys.modules  # nothing imported by asking
    import rr_waited_for

    assert seen == [1] and rr_waited_for.VALUE == 11  # ran on the module, after its own code
    assert type(rr_waited_for.__loader__).__name__ == "SourceFileLoader"  # its own loader, unwrapped
    when_imported("rr_waited_for", note)  # already loaded: at once
    assert seen == [1, 11]
    import importlib

    importlib.reload(rr_waited_for)  # a reload is not an import: not again
    assert seen == [1, 11]
    monkeypatch.delitem(sys.modules, "rr_waited_for")


def test_rays_setup_hook_leaves_torch_and_ray_train_unloaded_and_changes_them_when_loaded():
    """In a fresh process, as in each of Ray's: the hook loads neither torch nor Ray Train; once Ray
    Train's modules are imported, rrdist's changes to them are there."""
    code = textwrap.dedent("""
        import logging, sys
        from rrdist.train.logs import setup_worker_process
        setup_worker_process()
        print(sorted(m for m in ("torch", "ray.train", "ray.data", "pandas") if m in sys.modules))
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import _AutoscalingCoordinatorActor
        from ray.train.v2._internal.execution.scaling_policy.elastic import ElasticScalingPolicy
        from ray.train.v2._internal.logging import LoggingManager
        from ray.train.v2._internal.execution import context
        from rrdist.train.elastic_view import NODE_VIEW_S
        print(ElasticScalingPolicy.rrdist_fresh, _AutoscalingCoordinatorActor.TICK_INTERVAL_S <= NODE_VIEW_S,
              LoggingManager.configure_worker_logger.rrdist_quiet,
              logging.getLogger(context.__file__).level == logging.WARNING)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    unloaded, patched = done.stdout.splitlines()[-2:]
    assert unloaded == "[]"
    assert patched == "True True True True"
