"""The cluster files are what Ray and KubeRay expect."""

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_launcher_files_pass_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    for name, provider in (("aws.yaml", "aws"), ("gcp.yaml", "gcp")):
        config = yaml.safe_load((CLUSTER / name).read_text())
        validate_config(prepare_config(config))  # raises on a schema error
        assert config["provider"]["type"] == provider
        setup = " ".join(config["setup_commands"])
        assert "libopencv-dev" in setup and "libturbojpeg0-dev" in setup and "pip install" in setup
        assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_rayjob_manifest():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m rrdist sweep")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert spec["shutdownAfterJobFinishes"] is True
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
