"""A real two-node Ray cluster on one machine, with token authentication, that knows nothing of rrdist.

The head (127.0.0.2) and a second node joined with `ray start --address` (127.0.0.3) both run
from a fresh virtual environment that sees the installed packages (torch, ray, ffcv) but not the
checkout, from a folder outside it: every line of rrdist they run must arrive in the job's
working directory. `rrdist submit` sends a 2-worker pretraining (one worker per node, each node
has 1 CPU) that stages its data from a `file://` URI on each node.

Both nodes share this machine's disk; so that each node stages into a folder of its own, the
second node runs in a private mount namespace where its own folder is mounted over the staging
root (when the machine allows it: as root, or with unprivileged user namespaces).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"  # two loopback addresses: two nodes, nothing reachable from outside


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_venv(base: Path) -> Path:
    """A virtual environment whose site-packages adds this one's as a plain path entry: its .pth
    files (the editable install's import finder among them) are not run, so rrdist is missing."""
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "shared.pth").write_text("".join(f"{p}\n" for p in paths))
    ray = venv / "bin" / "ray"  # the console script, run by this environment's python
    ray.write_text(f"#!{venv}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)
    return venv


def mount_namespace(base: Path) -> list[str] | None:
    """The command prefix that runs a shell in a private mount namespace, or None if not allowed here."""
    if not shutil.which("unshare"):
        return None
    (base / "probe-a").mkdir()
    (base / "probe-b").mkdir()
    probe = f"mount --bind {base / 'probe-a'} {base / 'probe-b'}"
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        if subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0:
            return prefix
    return None


def processes_of(base: Path, gcs: str) -> list:
    """Every process of this cluster: those naming its folder, and the Ray client server (it names only the GCS)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if (str(base) in line or f"--address={gcs}" in line) and p.pid != os.getpid():
            found.append(p)
    return found


def stop_cluster(base: Path, gcs: str) -> list:
    """Stop this cluster's processes only (`ray stop` would stop every Ray on the machine). Ray's GCS
    and raylet outlast a SIGTERM sent to the whole cluster at once by over 25 s, so what is left
    after 2 s is killed (Ray's Python processes are gone by then); a process started meanwhile is found and killed on the next look."""
    import psutil

    for attempt in range(5):
        procs = processes_of(base, gcs)
        if not procs:
            break
        for p in procs:
            try:
                p.kill() if attempt else p.terminate()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=2 if attempt == 0 else 10)
    return processes_of(base, gcs)


@pytest.fixture
def cluster():
    base = Path(tempfile.mkdtemp(prefix="rr-mn-", dir="/tmp"))  # Ray's socket paths must stay short
    gcs = f"{HEAD_IP}:{free_port()}"
    try:
        venv = bare_venv(base)
        token = base / "auth_token"
        token.write_text(secrets.token_hex(32))  # one token, given to both nodes and the client
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
        env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                   RAY_USAGE_STATS_ENABLED="0")
        missing = subprocess.run(["python", "-c", "import ray, torch, ffcv; import rrdist"],
                                 cwd=base, env=env, capture_output=True, text=True, timeout=120)
        assert "No module named 'rrdist'" in missing.stderr, missing.stderr[-1000:]  # the nodes cannot import rrdist
        stage, own = base / "stage", base / "stage-node2"
        stage.mkdir()
        own.mkdir()
        dashboard = free_port()
        head = subprocess.run(
            ["ray", "start", "--head", "--node-ip-address", HEAD_IP, "--port", gcs.split(":")[1],
             "--dashboard-host", HEAD_IP, "--dashboard-port", str(dashboard),
             "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
             "--temp-dir", str(base / "head"), "--num-cpus", "1", "--disable-usage-stats"],
            cwd=base, env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]

        join = ["ray", "start", "--address", gcs, "--node-ip-address", NODE_IP,
                "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(base / "node2"),
                "--num-cpus", "1", "--disable-usage-stats"]
        namespace = mount_namespace(base)
        if namespace:  # the second node sees its own folder at the staging root
            join = [*namespace, "sh", "-c", f'mount --bind "{own}" "{stage}" && exec "$@"', "sh", *join]
        node = subprocess.run(join, cwd=base, env=env, capture_output=True, text=True, timeout=180)
        assert node.returncode == 0, node.stdout[-2000:] + node.stderr[-2000:]
        yield {"base": base, "address": f"http://{HEAD_IP}:{dashboard}", "token": token, "stage": stage,
               "node2_stage": own if namespace else stage, "per_node": bool(namespace)}
    finally:
        left = stop_cluster(base, gcs)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes left behind: {[p.pid for p in left]}"


def rrdist(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "rrdist", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def client_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    return {**env, **extra}


def staged(root: Path, source: Path) -> bool:
    """`root` holds a verified copy of the prepared digits data at `source`."""
    from rrdist.data.beton import sha256

    manifest = json.loads((source / "ffcv" / "digits" / "manifest.json").read_text())
    local = root / "ffcv" / "digits"
    return (local / "manifest.json").is_file() and all(
        (local / e["file"]).is_file() and sha256(local / e["file"]) == e["sha256"] for e in manifest["splits"].values())


def test_two_nodes_run_a_submitted_pretraining_with_token_auth(cluster, digits_root, tmp_path):
    address, base = cluster["address"], cluster["base"]

    # The cluster refuses requests without the token, and rrdist says so in one line.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
    assert refused.value.code == 401
    home = tmp_path / "home"
    home.mkdir()
    without = rrdist("submit", "--address", address, "--", "data", "list", env=client_env(HOME=str(home)))
    assert without.returncode == 2 and len(without.stderr.strip().splitlines()) == 1, without.stderr[-2000:]
    assert "requires a token and none was found" in without.stderr and "~/.ray/auth_token" in without.stderr
    wrong = rrdist("submit", "--address", address, "--", "data", "list",
                   env=client_env(HOME=str(home), RAY_AUTH_TOKEN=secrets.token_hex(32)))
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr[-2000:]
    assert "refused the token from RAY_AUTH_TOKEN" in wrong.stderr

    out = tmp_path / "run"
    ok = rrdist("submit", "--address", address, "--follow", "--", "pretrain", "--dataset", "digits",
                "--data-uri", f"file://{digits_root}", "--root", str(cluster["stage"]), "--K", "4", "--epochs", "1",
                "--workers", "2", "--batch-size", "32", "--out", str(out),
                env=client_env(RAY_AUTH_TOKEN_PATH=str(cluster["token"])))
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "SUCCEEDED" in ok.stderr and "epoch 1/1" in ok.stdout and (out / "backbone.pt").is_file()
    assert "2 workers on 2 node(s):" in ok.stdout and f"{NODE_IP} (rank " in ok.stdout  # one ran on the second node

    # The second node ran the code it was sent: its unpacked working directory holds rrdist/data.
    shipped = list((base / "node2").glob("session_*/runtime_resources/working_dir_files/*/rrdist/data/staging.py"))
    assert shipped, "the second node got no working directory with rrdist/data"

    # Each node staged the data into its own --root.
    assert staged(cluster["stage"], digits_root), "the head did not stage the data"
    assert staged(cluster["node2_stage"], digits_root), "the second node did not stage the data"
    if not cluster["per_node"]:
        warnings.warn("no mount namespace here: both nodes staged into one shared folder")
