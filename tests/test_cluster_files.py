"""The cluster files are what Ray and KubeRay expect, and what this project needs beyond their schemas:
an image whose Python and NVIDIA driver fit the project's Python and torch build, GPU resources on
GPU node types, cloud credentials on every node type, token authentication in every start
command, and excludes that keep the rrdist/data package."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAUNCHERS = (("aws.yaml", "aws"), ("gcp.yaml", "gcp"))

# What each image brings, from its publisher's release notes (read, not launched here). An image
# not listed fails the test: look its Python and driver up and add it.
IMAGES = {
    # Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04): /usr/bin/python3.12, driver 580+.
    "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id":
        {"python": "3.12", "driver": 580},
    # Deep Learning VM, Ubuntu 24.04, CUDA 12.9 toolkit, driver 580.
    "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2404-nvidia-580":
        {"python": "3.12", "driver": 580},
    # The images these files named before: Ray's `latest_dlami` (Ubuntu 18.04, Python 3.6) and the
    # Deep Learning VM family with driver 550 (CUDA 12.4).
    "latest_dlami": {"python": "3.6", "driver": 470},
    "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204-py310":
        {"python": "3.10", "driver": 550},
}


def cuda_major_supported(driver: int) -> int:
    """The newest CUDA major version a driver runs (minor versions are compatible from these drivers on)."""
    return 13 if driver >= 580 else 12 if driver >= 525 else 11


def requires_python() -> SpecifierSet:
    return SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])


def torch_cuda_major() -> int | None:
    """The CUDA major version of the torch build the project installs (what bootstrap put in this venv)."""
    import torch

    return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def node_image(provider: str, node: dict) -> str:
    config = node["node_config"]
    if provider == "aws":
        return config["ImageId"]
    return next(d["initializeParams"]["sourceImage"] for d in config["disks"] if d.get("boot"))


def is_gpu_node(provider: str, node: dict) -> bool:
    config = node["node_config"]
    if provider == "gcp":
        return bool(config.get("guestAccelerators"))
    return re.match(r"(g\d|p\d)", config["InstanceType"]) is not None


def anchored(patterns: list[str]) -> list[str]:
    """The patterns that match a bare name at any depth (and so could drop rrdist/data or rrdist/runs)."""
    return [p for p in patterns if not p.startswith("/") and "/" not in p.rstrip("/") and "*" not in p]


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_launcher_files_pass_rays_schema(name, provider):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher(name)
    validate_config(prepare_config(config))  # raises on a schema error
    assert config["provider"]["type"] == provider
    setup = " ".join(config["setup_commands"])
    assert "libopencv-dev" in setup and "libturbojpeg0-dev" in setup and "pip install" in setup
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_launcher_images_fit_python_and_torch(name, provider):
    config = launcher(name)
    images = {key: node_image(provider, node) for key, node in config["available_node_types"].items()}
    assert len(set(images.values())) == 1, f"{name}: one image on every node (one Python version): {images}"
    image = next(iter(images.values()))
    assert image in IMAGES, f"{name}: unknown image {image}: add its Python and driver to IMAGES"
    facts = IMAGES[image]
    assert Version(facts["python"]) in requires_python(), \
        f"{name}: {image} has Python {facts['python']}, the project needs {requires_python()}"
    cuda = torch_cuda_major()
    if cuda is not None:
        assert cuda_major_supported(facts["driver"]) >= cuda, \
            f"{name}: {image} has driver {facts['driver']}, too old for torch's CUDA {cuda} build"


def test_the_images_check_catches_the_old_images():
    """The check above fails on what the files named before (Python 3.6; a driver older than CUDA 13 needs)."""
    assert Version(IMAGES["latest_dlami"]["python"]) not in requires_python()
    assert cuda_major_supported(IMAGES["projects/deeplearning-platform-release/global/images/family/"
                                       "common-cu124-ubuntu-2204-py310"]["driver"]) < 13


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_gpu_node_types_declare_their_gpus(name, provider):
    gpu_types = {k: n for k, n in launcher(name)["available_node_types"].items() if is_gpu_node(provider, n)}
    assert gpu_types, f"{name}: no GPU node type"
    for key, node in gpu_types.items():
        resources = node.get("resources") or {}
        if provider == "gcp":  # Ray fills CPU/GPU counts on AWS only
            count = sum(a["acceleratorCount"] for a in node["node_config"]["guestAccelerators"])
            assert resources.get("GPU") == count and resources.get("CPU", 0) > 0, f"{name}:{key}: {resources}"
        else:
            assert resources == {} or resources.get("GPU", 0) >= 1, f"{name}:{key}: {resources}"


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_every_node_type_has_cloud_credentials(name, provider):
    for key, node in launcher(name)["available_node_types"].items():
        config = node["node_config"]
        if provider == "aws":
            profile = config.get("IamInstanceProfile") or {}
            assert profile.get("Name") or profile.get("Arn"), f"{name}:{key} has no instance profile"
        else:
            accounts = config.get("serviceAccounts") or []
            assert accounts and all(a.get("email") and a.get("scopes") for a in accounts), \
                f"{name}:{key} has no service account"


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_token_auth_on_every_node(name, provider):
    config = launcher(name)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"\bRAY_AUTH_MODE=token\b", command.split("ray start")[0]), command
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # the one token, on every node
    # The autoscaler's cloud library goes into the venv Ray runs from.
    head_setup = " ".join(config["head_setup_commands"])
    assert ".venv/bin/pip install" in head_setup
    assert ("boto3" if provider == "aws" else "google-api-python-client") in head_setup


@pytest.mark.parametrize("name,provider", LAUNCHERS)
def test_rsync_excludes_are_anchored(name, provider):
    patterns = launcher(name)["rsync_exclude"]
    assert "/data" in patterns and "/.venv" in patterns
    assert anchored(patterns) == []


def test_job_excludes_are_anchored():
    from rrdist.jobs import EXCLUDES

    assert "/data" in EXCLUDES and "/runs" in EXCLUDES and anchored(EXCLUDES) == []


def rayjob_documents() -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()))


def pod_templates(spec: dict) -> list[dict]:
    cluster = spec["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_rayjob_manifest():
    import ray

    docs = rayjob_documents()
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray (checked against the Dockerfile below)
    assert cluster["authOptions"]["mode"] == "token"  # the operator sets RAY_AUTH_MODE=token and the token everywhere
    groups = cluster["workerGroupSpecs"]
    if any("minReplicas" in g or "maxReplicas" in g for g in groups):
        assert cluster.get("enableInTreeAutoscaling") is True, "min/maxReplicas act only with the autoscaler"
    workers = groups[0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == 1

    # The sweep starts on prepared data: a download (or a --data-uri) comes first.
    entry = spec["entrypoint"]
    assert "rrdist sweep" in entry
    if "--data-uri" not in entry:
        assert "rrdist data prepare" in entry and "--download" in entry
        assert entry.index("data prepare") < entry.index("rrdist sweep")

    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for pod in pod_templates(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]  # torch and Ray need more than the runtime's 64 MiB
        assert shm["emptyDir"]["medium"] == "Memory"
        shared = volumes[mounts["/mnt/shared"]]
        assert shared["persistentVolumeClaim"]["claimName"] in claims  # the volume is part of the manifest
        assert pod["securityContext"]["fsGroup"] == 100  # group `users` of the image's `ray` user
    head = pod_templates(spec)[0]
    assert any("chown 1000:100 /mnt/shared" in " ".join(c["command"]) for c in head.get("initContainers", []))


def test_dockerfile_image_fits():
    import ray

    base = re.search(r"^FROM rayproject/ray:(\S+)-py3(\d+)", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile builds on a rayproject/ray image with a py3XX tag"
    assert base.group(1) == ray.__version__
    assert Version(f"3.{base.group(2)}") in requires_python()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored  # patterns there are relative to the context root
