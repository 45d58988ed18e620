"""A node lost mid-search on a real two-node Ray cluster: its trial is retried elsewhere and nothing is lost.

The cluster is Ray's own: `ray start --head` and a second `ray start --address` node on this machine, each
on loopback with one CPU, so each holds one trial. `python -m search.run --address` runs two trials on
it; once both are training, the worker node is killed (SIGKILL to its raylet and every process of that
node, as a machine that loses power), and the search must still finish both trials, the lost one from its
last checkpoint (FailureConfig).

The nodes are stopped by killing their own process groups, never with `ray stop`, which stops every Ray
process on the machine, other people's included. Ray 2.60 clusters authenticate with a token, and a driver
given an explicit `--address` only presents one when RAY_AUTH_MODE=token: the test makes a token of its own
for its cluster and hands it to every process through RAY_AUTH_TOKEN. (Ray resolves 127.0.0.1 to the
machine's own address for a node's identity; that is Ray's choice, the test asks for loopback.)

    python -m pytest tests/search/test_node_loss.py -q
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPACE = """
objective: {metric: ssim_t1_t1, mode: max}
search: {max_concurrent: 2}
scheduler: {type: none}
resources: {gpus_per_trial: 0, cpus_per_trial: 1}
checkpoint: {every: 1, keep: 2}
failure: {max_failures: 2}
fixed: {epochs: 8, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8, batch_size: 4, pool_size: 4}
points: [{seed: 0}, {seed: 1}]
"""
# The head declares a node dead after 3 missed health checks 0.5 s apart, instead of Ray's default of about
# 15 s: the same mechanism, sooner, so the test spends its time on the search.
FAST_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
              "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node(temp_dir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Starts one Ray node in the foreground (`--block`) as the leader of a new process group."""
    temp_dir.mkdir(parents=True)
    log = (temp_dir / "ray_start.log").open("w")
    cmd = ["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
           f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def node_processes(temp_dir: Path) -> list[int]:
    """Every process of the node started with `temp_dir`: its raylet, agents and workers name it or its session."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_node(node: subprocess.Popen, temp_dir: Path) -> None:
    """SIGKILLs a node: its process group, and any of its processes that started a group of their own."""
    for pid in {node.pid, *node_processes(temp_dir)}:
        for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass
    node.wait(timeout=30)


def wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 120) -> None:
    check = f"import ray; ray.init(address='{address}', log_to_driver=False); print(len(ray.nodes()))"
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
        if p.returncode == 0 and p.stdout.strip().splitlines()[-1] == str(count):
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} did not reach {count} nodes")


def training(run_dir: Path) -> list[Path]:
    """Trial folders that have reported an epoch and not yet their last."""
    found = []
    for metrics in run_dir.glob("trial_*/metrics.jsonl"):
        lines = metrics.read_text().splitlines()
        if lines and 1 <= json.loads(lines[-1])["epoch"] < 6:
            found.append(metrics.parent)
    return found


def test_a_worker_node_lost_mid_trial_and_the_search_still_finishes_every_trial(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(SPACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0", **FAST_DEATH,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Each node's own temp dir, short: Ray puts Unix sockets under it, whose paths may not exceed 107 bytes.
    short = Path(tempfile.mkdtemp(prefix="ray-"))
    head_dir, worker_dir = short / "head", short / "worker"
    head = ray_node(head_dir, "--head", f"--port={port}", "--include-dashboard=false", env=env)
    worker = driver = None
    try:
        wait_for_nodes(address, 1, env)
        worker = ray_node(worker_dir, f"--address={address}", env=env)
        wait_for_nodes(address, 2, env)

        run_dir = tmp_path / "runs" / "nodes"
        cmd = [sys.executable, "-m", "search.run", str(tmp_path / "nodes.yaml"), "--address", address,
               "--storage", str(tmp_path / "runs")]
        out = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and len(training(run_dir)) < 2:
            time.sleep(0.2)
        assert driver.poll() is None and len(training(run_dir)) == 2, (tmp_path / "driver.log").read_text()[-3000:]
        # One CPU a node: of two trials training at once, one is on the worker node. Power it off.
        kill_node(worker, worker_dir)
        assert not node_processes(worker_dir)
        killed_at = {d.name: len((d / "metrics.jsonl").read_text().splitlines()) for d in training(run_dir)}

        driver.wait(timeout=400)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-4000:]
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for node, temp_dir in ((worker, worker_dir), (head, head_dir)):
            if node is not None:
                kill_node(node, temp_dir)
        shutil.rmtree(short, ignore_errors=True)

    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows), rows
    lost = [r for r in rows if (Path(r["path"]) / "error.txt").is_file()]
    assert len(lost) == 1, "exactly the worker's trial failed once"
    lost_dir = Path(lost[0]["path"])
    assert "Failure # 1" in (lost_dir / "error.txt").read_text()
    # It was retried from its last checkpoint, not from scratch, and its history is whole: one line an epoch.
    assert (lost_dir / "restore.log").read_text().startswith(f"resumed from {lost_dir}/checkpoint_")
    for r in rows:
        epochs = [json.loads(x)["epoch"] for x in (Path(r["path"]) / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 9)), (r["trial_id"], epochs, killed_at)
    assert (run_dir / "best" / "model.pt").is_file()


@pytest.fixture(autouse=True)
def _needs_ray_cli() -> None:
    if subprocess.run(["ray", "--version"], capture_output=True).returncode != 0:
        pytest.skip("the ray command is not on PATH")
