"""An elastic group on a real multi-node Ray (a head and nodes joined with `ray start --address` on
loopback addresses, one CPU each): `--workers 1-3` starts on 3 workers with M = 64 (shares of 22,
21 and 21 images); a node is stopped mid-run and training goes on with 2; a node is added and
the group grows back to 3. Its views are a fixed-size run's bit for bit, its losses the same to
rounding, and each resize is logged with the steps it redid. (This is also the check that runs
on 1, 2 and 3 workers give the same views and loss trace over whole epochs.)"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rrdist.methods import make_config
from rrdist.train.position import read_position
from rrdist.train.trainer import pretrain

from test_multinode import free_port, processes_of, stop_cluster

REPO = Path(__file__).resolve().parent.parent
HEAD, NODES = "127.0.0.2", ("127.0.0.3", "127.0.0.4", "127.0.0.5")
SETTINGS = dict(dataset="digits", backbone="conv4", K=2, batch_size=64, epochs=4, precision="fp64",
                checkpoint_every=1, checkpoint_minutes=1e-6, check_every=4)  # a checkpoint every 4 steps
STEPS = 1437 // 64


class Cluster:
    """Ray nodes of this machine, each started and stopped by the test (by its processes, never by name)."""

    def __init__(self, base: Path) -> None:
        self.base, self.gcs = base, f"{HEAD}:{free_port()}"
        token = base / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        self.env.update(PATH=f"{Path(sys.executable).parent}:{self.env['PATH']}", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
                        # A stopped node is declared dead within about 2 s, not Ray's 30.
                        RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="500",
                        RAY_health_check_failure_threshold="3", RAY_health_check_initial_delay_ms="500")

    def start(self, name: str, ip: str, head: bool = False) -> None:
        where = ["--head", "--port", self.gcs.split(":")[1], "--dashboard-host", HEAD,
                 "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port())] if head \
            else ["--address", self.gcs]
        done = subprocess.run(["ray", "start", *where, "--node-ip-address", ip, "--num-cpus", "1",
                               "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(self.base / name),
                               "--disable-usage-stats"], cwd=self.base, env=self.env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def stop_node(self, name: str) -> None:
        """SIGKILL every process of one node, as a machine lost at once."""
        for p in processes_of(self.base / name, "-"):
            p.kill()


def wait_for(what, check, timeout: float, driver: subprocess.Popen, output: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        assert driver.poll() is None, f"the run ended before {what}: " + output.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s: " + output.read_text()[-3000:])


def events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [m for m in map(json.loads, lines) if "event" in m]


def trace(folder: Path) -> dict[tuple[int, int], tuple[float, dict]]:
    """(epoch, step) -> (the global loss, each image's view sums), from the workers of the attempt
    that finished the epoch (the count is in rank 0's entries)."""
    out = {}
    for epoch in range(1, SETTINGS["epochs"] + 1):
        first = json.loads((folder / f"epoch{epoch}-rank0.json").read_text())
        n = first[0]["workers"]
        ranks = [first] + [json.loads((folder / f"epoch{epoch}-rank{r}.json").read_text()) for r in range(1, n)]
        for entries in zip(*ranks):
            assert len({e["step"] for e in entries}) == 1 and sum(len(e["images"]) for e in entries) == 64
            views = {i: v for e in entries for i, v in zip(e["images"], e["views"])}
            out[(epoch, entries[0]["step"])] = (sum(e["loss"] for e in entries) / n, views)
    return out


@pytest.mark.usefixtures("ray_session")
def test_an_elastic_group_shrinks_and_grows_with_its_nodes_and_trains_the_same(digits_root, tmp_path, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="rr-el-", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = Cluster(base)
    run = tmp_path / "elastic"
    try:
        cluster.start("head", HEAD, head=True)
        cluster.start("node1", NODES[0])
        cluster.start("node2", NODES[1])
        env = {**cluster.env, "RRDIST_TRACE": str(tmp_path / "trace"), "PYTHONUNBUFFERED": "1"}
        flags = [f"--{k.replace('_', '-') if k != 'K' else 'K'}={v}" for k, v in SETTINGS.items()]
        driver = subprocess.Popen(
            [sys.executable, "-m", "rrdist", "pretrain", *flags, "--root", str(digits_root), "--out", str(run),
             "--workers", "1-3", "--resize-check-s", "2", "--max-failures", "5", "--address", cluster.gcs],
            cwd=REPO, env=env, stdout=(output := tmp_path / "driver.log").open("w"), stderr=subprocess.STDOUT)
        # On 3 workers, past a checkpoint inside epoch 1: one node goes (early: the growth needs time left).
        wait_for("3 workers in epoch 1", lambda: (p := read_position(run)) and p["workers"] == 3
                 and p["step"] >= 10, 300, driver, output)
        cluster.stop_node("node1")
        lost = time.monotonic()
        shrunk = wait_for("a resize to 2", lambda: [e for e in events(run) if e["workers"] == 2], 120, driver, output)[0]
        shrink_s = time.monotonic() - lost
        wait_for("steps on 2 workers", lambda: (p := read_position(run)) and p["workers"] == 2
                 and (p["epoch"], p["step"]) >= (shrunk["epoch"], shrunk["step"] + 4), 120, driver, output)
        cluster.start("node3", NODES[2])  # a new node: the group grows at its next look
        added = time.monotonic()
        grown = wait_for("a resize to 3", lambda: [e for e in events(run) if e["workers_before"] == 2
                                                   and e["workers"] == 3], 120, driver, output)[0]
        grow_s = time.monotonic() - added
        driver.wait(timeout=600)
        assert driver.returncode == 0, output.read_text()[-3000:]
    finally:
        if "driver" in locals() and driver.poll() is None:
            driver.kill()
        left = stop_cluster(base, cluster.gcs)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes left behind: {[p.pid for p in left]}"

    assert (shrunk["event"], shrunk["workers_before"]) == ("resize", 3)
    assert 0 <= shrunk["steps_redone"] <= SETTINGS["check_every"]  # at most the steps since the last checkpoint
    assert grown["event"] == "resize" and grown["steps_redone"] <= SETTINGS["check_every"]
    print(f"node lost -> training on 2: {shrink_s:.1f} s; node added -> 3 workers: {grow_s:.1f} s")

    # The same experiment as a fixed group of one worker (this session's local Ray).
    monkeypatch.setenv("RRDIST_TRACE", str(tmp_path / "fixed-trace"))
    pretrain(make_config(root=str(digits_root), out=str(tmp_path / "fixed"), workers=1, **SETTINGS),
             log=lambda *a: None)
    elastic, fixed = trace(tmp_path / "trace"), trace(tmp_path / "fixed-trace")
    counts = {json.loads((tmp_path / "trace" / f"epoch{e}-rank0.json").read_text())[0]["workers"]
              for e in range(1, SETTINGS["epochs"] + 1)}
    assert 3 in counts  # epochs finished on 3 workers (uneven shares), and the rest on 2 or 3
    assert len(fixed) == SETTINGS["epochs"] * STEPS and set(elastic) <= set(fixed)
    assert len(elastic) >= len(fixed) - 2 * STEPS  # every epoch's end, and the steps after each restart
    for key, (loss, views) in elastic.items():
        assert views == fixed[key][1], key  # every image's views, bit for bit, on 3, 2 and 1 workers
        assert abs(loss - fixed[key][0]) <= 1e-9 * abs(fixed[key][0]), (key, loss, fixed[key][0])
    logged = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "event" not in m]
    want = [json.loads(line) for line in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in logged] == [1, 2, 3, 4] and [m["steps"] for m in logged] == [STEPS] * 4
    for a, b in zip(logged, want):
        assert abs(a["loss"] - b["loss"]) <= 1e-9 * abs(b["loss"]), (a, b)
