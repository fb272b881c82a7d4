"""`rrdist submit` and `rrdist jobs` against a real Ray head started with cluster/local.sh."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def packaged(directory: Path, tmp_path: Path) -> set[str]:
    """The files of the working directory `rrdist submit` ships, zipped by Ray's own packaging code."""
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import _zip_files

    from rrdist.jobs import EXCLUDES

    out = tmp_path / "package.zip"
    _zip_files(str(directory), EXCLUDES, str(out), include_gitignore=True)  # as JobSubmissionClient does
    with ZipFile(out) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_the_shipped_working_directory_holds_every_file_of_the_package(tmp_path):
    listed = subprocess.run(["git", "ls-files", "rrdist"], cwd=REPO, capture_output=True, text=True)
    files = set(listed.stdout.split()) if listed.returncode == 0 and listed.stdout.strip() else \
        {str(p.relative_to(REPO)) for p in (REPO / "rrdist").rglob("*.py")}
    assert "rrdist/data/staging.py" in files and "rrdist/train/loop.py" in files
    missing = sorted(files - packaged(REPO, tmp_path))
    assert missing == [], f"not shipped with a submitted job: {missing}"


def test_excludes_drop_top_level_folders_only(tmp_path):
    tree = tmp_path / "checkout"
    for name in ["rrdist/__init__.py", "rrdist/data/loader.py", "rrdist/runs/x.py", "data/ffcv/a.beton",
                 "data/raw.bin", "runs/r/backbone.pt", ".venv/bin/python", ".git/HEAD", "bench/_work/w.txt",
                 "bench/run.py", "rrdist/__pycache__/x.pyc", "tests/data/sample.txt"]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    shipped = packaged(tree, tmp_path)
    assert shipped == {"rrdist/__init__.py", "rrdist/data/loader.py", "rrdist/runs/x.py", "bench/run.py",
                       "tests/data/sample.txt"}


@pytest.fixture
def head(tmp_path):
    ray_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RRDIST_RAY_DIR": ray_dir, "RRDIST_RAY_PORT": str(free_port()),
           "RRDIST_DASHBOARD_PORT": str(free_port()), "RRDIST_AGENT_PORT": str(free_port()),
           "RRDIST_CLIENT_PORT": str(free_port()), "RRDIST_RAY_CPUS": "2",
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}  # local.sh makes it; rrdist submit reads it
    env.pop("RAY_AUTH_TOKEN", None)
    started = subprocess.run(["bash", "cluster/local.sh", "start"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    assert (tmp_path / "auth_token").stat().st_mode & 0o077 == 0  # the token is readable by its owner only
    try:
        yield f"http://127.0.0.1:{env['RRDIST_DASHBOARD_PORT']}", env
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
        left = subprocess.run(["pgrep", "-f", "--", env["RRDIST_RAY_DIR"]], capture_output=True, text=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
        assert left.stdout.strip() == "", "local.sh stop left processes behind"


def test_local_sh_refuses_a_taken_port(tmp_path):
    ray_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")
    env = {**os.environ, "RRDIST_RAY_DIR": ray_dir, "RRDIST_RAY_PORT": str(free_port()),
           "RRDIST_AGENT_PORT": str(free_port()), "RRDIST_CLIENT_PORT": str(free_port()),
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}
    with socket.socket() as taken:  # another service (or another Ray's dashboard) on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["RRDIST_DASHBOARD_PORT"] = str(taken.getsockname()[1])
        out = subprocess.run(["bash", "cluster/local.sh", "start"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
    left = subprocess.run(["pgrep", "-f", "--", ray_dir], capture_output=True, text=True).stdout.strip()
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert out.returncode == 1 and out.stdout == "", out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert f"port {env['RRDIST_DASHBOARD_PORT']} (RRDIST_DASHBOARD_PORT) already in use" in out.stderr
    assert left == "" and not (tmp_path / "auth_token").exists()  # nothing was started


def rrdist(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rrdist", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_unreachable_head_is_one_line(tmp_path):
    out = rrdist("submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "data", "list", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("rrdist: error: cannot reach the Ray job API")
    assert len(out.stderr.strip().splitlines()) == 1


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening(ray_dir):
    """{(process name and command line, address)} of the listening sockets of the head and its children."""
    import psutil

    found = set()
    heads = subprocess.run(["pgrep", "-f", "--", ray_dir], capture_output=True, text=True).stdout.split()
    procs = []
    for pid in heads:
        try:
            p = psutil.Process(int(pid))
            procs += [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
    for p in procs:
        try:
            name = f"{p.name()} {' '.join(p.cmdline())[:60]}"
            found |= {(name, c.laddr.ip) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue  # a process that ended meanwhile
    return found


def test_submit_follow_and_jobs_all_on_loopback(head, tmp_path):
    """A pretraining submitted with --follow, then `rrdist jobs`; meanwhile every port of the local.sh
    head and of the job (GCS, raylet, object manager, Ray client, dashboard, job API, workers, torch's
    rendezvous store) listens on 127.0.0.1 only."""
    address, env = head
    seen, stop = set(), threading.Event()

    def sample():
        while not stop.is_set():
            seen.update(listening(env["RRDIST_RAY_DIR"]))
            stop.wait(0.3)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ok = rrdist("submit", "--address", address, "--follow", "--", "pretrain", "--dataset", "digits",
                    "--root", str(tmp_path / "data"), "--K", "3", "--epochs", "1", "--workers", "1",
                    "--out", str(tmp_path / "run"), env=env, timeout=600)
    finally:
        stop.set()
        sampler.join()
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    job_id = ok.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_") and "SUCCEEDED" in ok.stderr
    assert "epoch 1/1" in ok.stdout and (tmp_path / "run" / "backbone.pt").is_file()
    names = " ".join(name for name, _ in seen)
    assert "gcs_server" in names and "raylet" in names and "RayTrainWorker" in names  # the run was watched
    exposed = sorted((name, ip) for name, ip in seen if ip not in LOOPBACK)
    assert exposed == [], f"listening beyond 127.0.0.1: {exposed}"

    bad = rrdist("submit", "--address", address, "--follow", "--", "pretrain", "--K", "1", env=env)
    assert bad.returncode == 1  # the job's failure is the command's exit status
    assert "K must be at least 2" in bad.stdout and "FAILED" in bad.stderr

    listed = rrdist("jobs", "list", "--address", address, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "FAILED" in listed.stdout
    logs = rrdist("jobs", "logs", job_id, "--address", address, env=env)
    assert "pretraining relational/conv4 on digits" in logs.stdout
    assert rrdist("jobs", "status", job_id, "--address", address, env=env).stdout.strip() == "SUCCEEDED"
    stop_job = rrdist("jobs", "stop", job_id, "--address", address, env=env)
    assert stop_job.returncode == 0 and "already ended" in stop_job.stdout
