import atexit
import os
import shutil
import tempfile

# Working copies of runs at URIs go to a folder of this session (set before Ray starts its workers).
if "RRDIST_CACHE" not in os.environ:
    os.environ["RRDIST_CACHE"] = tempfile.mkdtemp(prefix="rrdist-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RRDIST_CACHE"], ignore_errors=True)
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Ray Train's controller polls its workers every 2 s by default,
# so each short test run waited up to 2 s for every report and for its end; 0.2 s saves 2-3 s a run.
for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402

# Fixtures that start Ray: a test using one is marked `ray`, so `pytest -m "not ray"` runs the rest quickly.
RAY_FIXTURES = {"ray_session", "cluster", "head"}


# The modules with tests that use `ray_session`, in two halves of about equal time. Under pytest-xdist (`-n 2`,
# as `scripts/bootstrap.sh test` runs the suite) each half runs whole in one test process, which starts its
# own local Ray for it; every other module goes, whole, to whichever process is free.
RAY_SESSION_MODULES = {
    "test_halving_sweep.py": 1, "test_faults.py": 1, "test_elastic.py": 1, "test_global_batch.py": 1,
    "test_run_uri.py": 1, "test_staging.py": 1, "test_monitors.py": 1, "test_bad_input.py": 1,
    "test_sweep.py": 2, "test_relative_paths.py": 2, "test_interruptions.py": 2, "test_api.py": 2,
    "test_train_ray.py": 2, "test_jpeg_data.py": 2, "test_baselines.py": 2, "test_simclr.py": 2}


# The longest modules without the session's Ray (their own clusters): scheduled right after the two
# halves, so that none of them is left to run alone at the end.
LONG_MODULES = ("test_slurm.py", "test_quiet_output.py", "test_submit.py", "test_multinode.py")


def pytest_collection_modifyitems(config, items):
    # The longest work first (pytest-xdist hands out whole modules in this order), then the rest in file order.
    def rank(item):
        name = item.path.name
        return (0, 0) if name in RAY_SESSION_MODULES else (1, LONG_MODULES.index(name)) if name in LONG_MODULES \
            else (2, 0)

    items.sort(key=rank)
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if RAY_FIXTURES & fixtures:
            item.add_marker(pytest.mark.ray)
        if "ray_session" in fixtures and item.path.name not in RAY_SESSION_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses the ray_session fixture: add {item.path.name} to "
                                    "RAY_SESSION_MODULES in tests/conftest.py")


def pytest_xdist_make_scheduler(config, log):
    """Whole modules to the free test process; a half of the session-Ray modules is one unit of work."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems

    class RaySessionHalves(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            half = RAY_SESSION_MODULES.get(module.rsplit("/", 1)[-1])
            return f"ray_session_{half}" if half else module

    return RaySessionHalves(config, log)


@pytest.fixture(autouse=True)
def _ray_only_through_the_session_fixture(request):
    """A test that starts Ray in the test process must say so (the `ray_session` fixture), so that a test
    process holds at most one local Ray, started for the session-Ray modules it runs."""
    import sys

    had_ray = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if not had_ray and "ray_session" not in request.fixturenames and "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized(), \
            f"{request.node.nodeid} started Ray in the test process: give it the ray_session fixture"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session."""
    import ray

    from rrdist.train.trainer import init_ray

    init_ray(None)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    from rrdist.data.beton import prepare

    root = tmp_path_factory.mktemp("digits-data")
    prepare("digits", root, log=lambda *a: None)
    return root
