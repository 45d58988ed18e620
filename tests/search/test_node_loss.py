"""A node lost mid-search on a real two-node Ray cluster: its trial is retried elsewhere and nothing is lost.

The cluster is Ray's own: `ray start --head` and a second `ray start --address` node on this machine, each
on loopback with one CPU, so each holds one trial. `python -m search.run --address` runs two trials on
it; once both are training, the worker node is killed (SIGKILL to its raylet and every process of that
node, as a machine that loses power), and the search must still finish both trials, the lost one from its
last checkpoint (FailureConfig).

The nodes are started and stopped by tests/raynodes.py (their own process groups, never `ray stop`), with a
token of the test's own for its cluster. (Ray resolves 127.0.0.1 to the machine's own address for a node's
identity; that is Ray's choice, the test asks for loopback.)

    python -m pytest tests/search/test_node_loss.py -q
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.raynodes import free_port, kill_node, node_processes, ray_node, token_env, wait_for_nodes

pytestmark = pytest.mark.slow  # a two-node Ray cluster and a search on it

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
    env = token_env(**FAST_DEATH)
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
