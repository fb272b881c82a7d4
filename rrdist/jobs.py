"""Submitting rrdist commands to a Ray cluster through Ray's Job Submission API."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from rrdist.errors import RrdistError, first_line

# Never shipped with the working directory: environments, data and results stay where they are.
EXCLUDES = [".venv", ".git", "runs", "data", "bench/_work", "**/__pycache__", "*.beton"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def client(address: str | None):
    # Ray 2.60 heads started with `ray start` require a token (~/.ray/auth_token); Ray reads
    # this setting when it is imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except Exception as e:
        raise RrdistError(f"cannot reach the Ray job API at {address} ({first_line(e, 160)}): start a head with "
                          f"`cluster/local.sh start`, or pass --address http://HEAD:8265 (via an SSH tunnel)") from None


def submit(args: list[str], address: str | None = None, follow: bool = False,
           working_dir: str | Path = ".") -> int:
    if not args:
        raise RrdistError("nothing to submit: give the rrdist arguments after --, e.g. "
                          "`rrdist submit -- pretrain --dataset digits`")
    jobs = client(address)
    entrypoint = "python -m rrdist " + " ".join(shlex.quote(a) for a in args)
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES,
                   "env_vars": {"PYTHONUNBUFFERED": "1"}}
    deadline = time.time() + 60
    while True:
        try:
            job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as e:  # a head that just started has no job agent for a few seconds
            if "try again later" in str(e) and time.time() < deadline:
                time.sleep(2)
                continue
            raise RrdistError(f"the cluster refused the job ({first_line(e)})") from None
    print(job_id, flush=True)
    if not follow:
        print(f"follow it with: rrdist jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    return follow_job(jobs, job_id)


def follow_job(jobs, job_id: str) -> int:
    """Stream a job's logs until it ends; the job's status becomes the exit status."""
    from ray.job_submission import JobStatus

    printed = 0
    while True:
        status = jobs.get_job_status(job_id)
        logs = jobs.get_job_logs(job_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status.is_terminal():
            break
        time.sleep(1.0)
    info = jobs.get_job_info(job_id)
    reason = (info.message or "").strip().splitlines()[0] if (info.message or "").strip() else ""
    print(f"job {job_id}: {status.value}" + (f" ({reason})" if reason and status != JobStatus.SUCCEEDED else ""),
          file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


def jobs_command(action: str, job_id: str | None, address: str | None, follow: bool = False) -> int:
    jobs = client(address)
    if action == "list":
        for job in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{job.submission_id or job.job_id}  {job.status.value:9s}  {job.entrypoint}")
        return 0
    if not job_id:
        raise RrdistError(f"`rrdist jobs {action}` needs a job id: see `rrdist jobs list`")
    try:
        if action == "logs":
            if follow:
                return follow_job(jobs, job_id)
            print(jobs.get_job_logs(job_id), end="")
            return 0
        if action == "stop":
            stopped = jobs.stop_job(job_id)
            print(f"job {job_id}: {'stopping' if stopped else 'already ended'}")
            return 0
        if action == "status":
            print(jobs.get_job_status(job_id).value)
            return 0
    except RuntimeError as e:
        raise RrdistError(f"job {job_id}: {first_line(e)}: see `rrdist jobs list`") from None
    raise RrdistError(f"unknown jobs action '{action}': choose list, status, logs or stop")
