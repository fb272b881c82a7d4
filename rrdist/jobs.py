"""Submitting rrdist commands to a Ray cluster through Ray's Job Submission API."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from rrdist.errors import RrdistError, first_line
from rrdist.storage import SUBMITTED

# Never shipped with the working directory: environments, data and results stay where they are.
# Ray reads these as .gitignore patterns relative to the working directory: a bare `data` would
# match at any depth and drop the `rrdist/data` package too, so top-level folders are anchored.
EXCLUDES = ["/.venv", "/.git", "/runs", "/data", "/build", "/bench/_work", "**/__pycache__", "*.beton", "*.egg-info"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class TokenError(RrdistError):
    """The cluster wants a Ray token that is missing here, or refused the one given."""


TOKEN_FIX = ("copy the head's token (print it there with `ray get-auth-token`) to ~/.ray/auth_token, "
             "or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def find_token() -> str | None:
    """Where the Ray token comes from, in the order Ray's clients read it: RAY_AUTH_TOKEN,
    the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token. None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        if not path.is_file() or not path.read_text().strip():
            # Ray aborts the whole process on this; say what is wrong instead.
            raise TokenError(f"RAY_AUTH_TOKEN_PATH={named} is not a file holding a token: {TOKEN_FIX}")
        return str(path)
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.read_text().strip() else None


def _auth_error(e: Exception, address: str, source: str | None) -> TokenError:
    if "Authentication failed" in str(e) or "Invalid authentication token" in str(e):  # HTTP 403
        return TokenError(f"the Ray cluster at {address} refused the token from {source}: {TOKEN_FIX}")
    return TokenError(f"the Ray cluster at {address} requires a token and none was found: {TOKEN_FIX}")


def client(address: str | None):
    """A job client for the head at `address`, sending the Ray token when there is one."""
    source = find_token()
    if not source and os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        raise TokenError(f"RAY_AUTH_MODE=token is set but no Ray token was found: {TOKEN_FIX}")
    # Ray reads the mode when it is imported. With no token at all, token mode would make Ray
    # refuse to start the client; a cluster that wants one answers 401, reported below.
    if source and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    try:
        jobs = JobSubmissionClient(address)
    except AuthenticationError as e:
        raise _auth_error(e, address, source) from None
    except Exception as e:
        raise RrdistError(f"cannot reach the Ray job API at {address} ({first_line(e, 160)}): start a head with "
                          f"`cluster/local.sh start`, or pass --address http://HEAD:8265 (via an SSH tunnel)") from None
    jobs.rrdist_address, jobs.rrdist_token_source = address, source
    return jobs


def submit(args: list[str], address: str | None = None, follow: bool = False,
           working_dir: str | Path = ".") -> int:
    if not args:
        raise RrdistError("nothing to submit: give the rrdist arguments after --, e.g. "
                          "`rrdist submit -- pretrain --dataset digits`")
    jobs = client(address)
    from ray.exceptions import AuthenticationError  # after client(): importing Ray fixes the auth mode

    entrypoint = "python -m rrdist " + " ".join(shlex.quote(a) for a in args)
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES,
                   # the job runs in a temporary copy of this folder: paths must not lead into it (rrdist.storage)
                   "env_vars": {"PYTHONUNBUFFERED": "1", SUBMITTED: "1"}}
    deadline = time.time() + 60
    while True:
        try:
            job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except AuthenticationError as e:
            raise _auth_error(e, jobs.rrdist_address, jobs.rrdist_token_source) from None
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
    from ray.exceptions import AuthenticationError  # after client(): importing Ray fixes the auth mode

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
    except AuthenticationError as e:
        raise _auth_error(e, jobs.rrdist_address, jobs.rrdist_token_source) from None
    raise RrdistError(f"unknown jobs action '{action}': choose list, status, logs or stop")
