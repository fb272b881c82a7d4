import atexit
import os
import shutil
import tempfile

# Working copies of runs at URIs go to a folder of this session (set before Ray starts its workers).
if "RRDIST_CACHE" not in os.environ:
    os.environ["RRDIST_CACHE"] = tempfile.mkdtemp(prefix="rrdist-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RRDIST_CACHE"], ignore_errors=True)
for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402


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
