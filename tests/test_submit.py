"""`rrdist submit` and `rrdist jobs` against a real Ray head started with cluster/local.sh."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head():
    ray_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RRDIST_RAY_DIR": ray_dir, "RRDIST_RAY_PORT": str(free_port()),
           "RRDIST_DASHBOARD_PORT": str(free_port()), "RRDIST_AGENT_PORT": str(free_port()), "RRDIST_RAY_CPUS": "1"}
    started = subprocess.run(["bash", "cluster/local.sh", "start"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"http://127.0.0.1:{env['RRDIST_DASHBOARD_PORT']}", env
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
        left = subprocess.run(["pgrep", "-f", "--", env["RRDIST_RAY_DIR"]], capture_output=True, text=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
        assert left.stdout.strip() == "", "local.sh stop left processes behind"


def rrdist(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rrdist", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_follow_and_jobs(head):
    address, env = head
    ok = rrdist("submit", "--address", address, "--follow", "--", "data", "list", env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    job_id = ok.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "digits" in ok.stdout and "SUCCEEDED" in ok.stderr

    bad = rrdist("submit", "--address", address, "--follow", "--", "pretrain", "--K", "1", env=env)
    assert bad.returncode == 1  # the job's failure is the command's exit status
    assert "K must be at least 2" in bad.stdout and "FAILED" in bad.stderr

    listed = rrdist("jobs", "list", "--address", address, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "FAILED" in listed.stdout
    logs = rrdist("jobs", "logs", job_id, "--address", address, env=env)
    assert "imagefolder" in logs.stdout
    assert rrdist("jobs", "status", job_id, "--address", address, env=env).stdout.strip() == "SUCCEEDED"
    stop = rrdist("jobs", "stop", job_id, "--address", address, env=env)
    assert stop.returncode == 0 and "already ended" in stop.stdout


def test_unreachable_head_is_one_line(tmp_path):
    out = rrdist("submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "data", "list", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("rrdist: error: cannot reach the Ray job API")
    assert len(out.stderr.strip().splitlines()) == 1
