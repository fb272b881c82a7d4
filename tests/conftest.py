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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


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
