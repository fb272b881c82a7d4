"""cluster/slurm.sbatch on a real SLURM (munge, slurmctld and slurmd started here, one node, by
process id): a digits pretraining told that its time limit is near (USR1) checkpoints, ends and
requeues itself; requeued by the queue mid-run (`scontrol requeue`, all its processes signalled),
it continues from its last checkpoint; it finishes in the same run folder, every epoch logged
once, with the steps redone at most those since the last checkpoint."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rrdist.train.position import read_position

REPO = Path(__file__).resolve().parent.parent
STEPS, CHECK = 1437 // 64, 4


def memory_mb() -> int:
    """This machine's memory: a node declaring more than it has would be drained by slurmctld."""
    import psutil

    return int(psutil.virtual_memory().total // 2**20)


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture
def slurm():
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        assert shutil.which(tool), f"{tool} is missing: `bash scripts/bootstrap.sh test` installs SLURM"
    base = Path(tempfile.mkdtemp(prefix="rr-sl-", dir="/tmp"))
    host = socket.gethostname().split(".")[0]
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for d in ("state", "spool", "jobs"):
        (base / d).mkdir()
    conf = base / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=rrdisttest", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={base}/munge.sock", "CredType=cred/munge", "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none", "ReturnToService=2", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        f"StateSaveLocation={base}/state", f"SlurmdSpoolDir={base}/spool", f"SlurmctldPidFile={base}/ctld.pid",
        f"SlurmdPidFile={base}/d.pid", f"SlurmctldLogFile={base}/slurmctld.log", f"SlurmdLogFile={base}/slurmd.log",
        "SlurmctldPort=6917", "SlurmdPort=6918", "MpiDefault=none", "KillWait=10",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb() // 2} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        # No cgroup.conf: slurmd 22.05 refuses CgroupPlugin=disabled, and runs without the file.
        daemons.append(start(["munged", "-F", "--force", f"--socket={base}/munge.sock", f"--key-file={key}",
                              f"--pid-file={base}/munged.pid", f"--log-file={base}/munged.log",
                              f"--seed-file={base}/munge.seed"], base / "munged.out"))
        time.sleep(1)
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen(["slurmd", "-D"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT))
        until(lambda: "idle" in run(["sinfo", "-h", "-o", "%t"], env), 60, "an idle SLURM node")
        yield {"base": base, "env": env}
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=30)
        time.sleep(2)
        for p in reversed(daemons):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for pid in leftovers(base):  # a job's Ray processes that escaped the process tracking
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def leftovers(base: Path) -> list[int]:
    """Processes of this SLURM or of its jobs: named by their folders, or (Ray's processes retitle
    themselves) carrying this SLURM's configuration in their environment, as every job process does."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        try:  # the raw bytes: a retitled process's environment block starts with its new title
            ours = f"SLURM_CONF={base / 'slurm.conf'}\0".encode() in Path(f"/proc/{p.pid}/environ").read_bytes()
        except OSError:
            ours = False
        if (str(base) in line or "/tmp/rrdist-slurm-" in line or ours) and p.pid != os.getpid():
            found.append(p.pid)
    return found


def run(command: list[str], env: dict) -> str:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60).stdout


def until(check, timeout: float, what: str, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"no {what} within {timeout} s")


def job_state(job: str, env: dict) -> str:
    line = run(["scontrol", "show", "job", job, "-o"], env)
    return next((w.split("=")[1] for w in line.split() if w.startswith("JobState=")), "GONE")


def release(job: str, env: dict) -> None:
    """A requeued job waits two minutes before it may start again: let it start now."""
    until(lambda: job_state(job, env) == "PENDING", 60, "the job back in the queue")
    until(lambda: run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env) is not None
          and job_state(job, env) == "RUNNING", 120, "the requeued job running", every=2)


def test_a_slurm_job_checkpoints_requeues_and_finishes_the_same_run(slurm, digits_root):
    base, env = slurm["base"], slurm["env"]
    run_dir = base / "run"
    env = {**env, "RRDIST_SLURM_DIR": str(base / "jobs")}
    job = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task", str(os.cpu_count()), "--output", f"{base}/job-%j.out",
         "cluster/slurm.sbatch", "pretrain", "--dataset", "digits", "--root", str(digits_root), "--out", str(run_dir),
         "--backbone", "conv4", "--K", "2", "--batch-size", "64", "--epochs", "4", "--workers", "2",
         "--checkpoint-minutes", "1e-6", "--check-every", str(CHECK)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    job = job.stdout.strip().split(";")[0]
    output = base / f"job-{job}.out"

    def at(epoch, step):
        return lambda: (p := read_position(run_dir)) is not None and (p["epoch"], p["step"]) >= (epoch, step)

    # 1. The time limit is near: SLURM's --signal sends USR1 to the batch script.
    until(at(0, 6), 300, "training in epoch 1")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
    release(job, env)
    stopped = read_position(run_dir)
    # 2. Requeued by the queue mid-run: every process of the job is signalled, then killed.
    until(at(2, 6), 300, "training in epoch 3")
    subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=30)
    release(job, env)
    until(lambda: job_state(job, env) in ("COMPLETED", "FAILED", "GONE"), 400, "the job's end", every=2)
    text = output.read_text()
    assert job_state(job, env) == "COMPLETED", text[-3000:]

    assert "asking the workers to checkpoint and stop" in text and "requeueing job" in text
    assert "restart 1)" in text and "restart 2)" in text  # the same job, started three times
    assert "stopped at step" in text  # the workers' checkpoint at the stop, said in one line
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in lines if "event" not in m]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4] and [m["steps"] for m in epochs] == [STEPS] * 4
    assert (run_dir / "backbone.pt").is_file()
    restarts = [m for m in lines if m.get("event") == "restart"]
    assert [(m["epoch"], m["step"]) for m in restarts if m["epoch"] < 2] == [], (stopped, restarts)  # none redone
    assert restarts, lines  # the hard requeue redid some steps
    assert all(0 < m["steps_redone"] <= CHECK for m in restarts), restarts  # at most those since a checkpoint
