"""The cluster path as the README gives it, on a real Ray cluster shaped like `cluster.yaml`, on this CPU machine.

The head has no CPU and no GPU (`ray start --head --num-cpus 0 --num-gpus 0`, as `cluster.yaml`'s head), and no
worker runs when the search is submitted: Ray's autoscaler starts one of `cluster.yaml`'s own worker types (read
from the file: 4 CPUs and 1 GPU, declared, not real) once the trials ask for it (tests/autoscaled.py). The search
goes in as the README submits it, `ray job submit --working-dir . -- python -m search.run ...`, with tiny knobs;
from each trial's `resources.json`: it ran on the worker, never on the head, with the GPU share its space asks for
(Ray's own `get_assigned_resources()`), and its results, TensorBoard events and the winner's `best/` are in
`--storage`. Torch there finds no CUDA, so the trials train on the CPU with the GPU Ray gave them. The finalists are
re-scored on the worker too (`search/cluster_scoring.py`), since the head has no GPU: `driver.json` names the node.

A cluster that can never have a GPU (no live node has one, and its autoscaler has no node type with one, or no
autoscaler config is in reach) refuses the search in one line before any trial starts.

    python -m pytest tests/search/test_cluster.py -q
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from search.cluster import LAUNCHER_CONFIG
from tests.autoscaled import CONFIG_NAME, autoscaler_config, cluster_env, worker_types
from tests.raynodes import free_port, kill_node, ray_node, token_env, wait_for_nodes

pytestmark = pytest.mark.slow  # an autoscaling Ray cluster, a job server, and a search on it

ROOT = Path(__file__).resolve().parents[2]
# One epoch: the space's ASHA then has no rung to stop a trial at, and both trials finish whichever reports first.
TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8",
        "--set", "upsample=resize", "--set", "epochs=1"]
SHARE = 0.25  # spaces/unet_depth.yaml's gpus_per_trial
# Two tiny trials fit one worker of 4 CPUs; a second worker would only load the two cores.
MOST_WORKERS = 1

NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps([{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]))
"""


def wait_for_http(url: str, timeout: float = 120) -> None:
    """Returns once something answers at `url` (the job server answers 401 to a request without the token)."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.time() > deadline:
                raise AssertionError(f"nothing answered at {url} in {timeout:.0f} s") from None
            time.sleep(0.5)


def nodes(address: str, env: dict[str, str]) -> list[dict]:
    p = subprocess.run([sys.executable, "-c", NODES, address], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_job_submitted_as_the_readme_says_keeps_its_gpu_share_for_a_worker_the_autoscaler_starts(
        tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="ray-"))  # Unix sockets live under it: their paths may not exceed 107 bytes
    home = short / "home"
    home.mkdir()
    port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = cluster_env(token_env(), home)
    config = autoscaler_config(worker_types(ROOT / "cluster.yaml"), address, short, MOST_WORKERS)
    (home / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
    head = ray_node(short / "head", "--head", f"--port={port}", f"--autoscaling-config={home / CONFIG_NAME}",
                    "--include-dashboard=true", f"--dashboard-port={dashboard}", env=env, cpus=0, gpus=0)
    runs = tmp_path / "runs"
    try:
        wait_for_nodes(address, 1, env)
        before = nodes(address, env)
        wait_for_http(f"http://127.0.0.1:{dashboard}/api/version")
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
             "python", "-m", "search.run", "spaces/unet_depth.yaml", "--storage", str(runs), "--num-samples", "2",
             *TINY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        after = nodes(address, env)
    finally:
        kill_node(head, short)  # the head and every worker the autoscaler started: all of their folders are in it
        shutil.rmtree(short, ignore_errors=True)

    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-5000:]
    # When the search started, the head was the only node and the cluster had no GPU.
    assert len(before) == 1 and "GPU" not in before[0]["resources"], before
    head_id = before[0]["id"]
    assert "note: no GPU node in the Ray cluster yet; its autoscaler can start gpu_a10g (1 GPU), gpu_l4 (1 GPU)" in log
    assert "running trials on the CPU" not in log
    workers = {n["id"]: n for n in after if n["id"] != head_id}
    assert workers and all(n["resources"].get("GPU") == 1 and n["resources"].get("CPU") == 4
                           for n in workers.values()), after

    run_dir = runs / "unet_depth"
    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows), rows
    for r in rows:
        trial = Path(r["path"])
        assert trial.parent == run_dir  # in --storage, not in the job's working folder
        record = json.loads((trial / "resources.json").read_text())
        assert record["node_id"] in workers and record["node_id"] != head_id, (record, head_id)
        assert record["gpu_share"] == SHARE and record["share_from"] == "ray"
        assert record["assigned"]["GPU"] == SHARE and len(record["gpu_ids"]) == 1
        assert record["cuda_visible_devices"] == record["gpu_ids"][0] and record["device"] == "cpu"
        assert list(trial.glob("events.out.tfevents.*")) and (trial / "metrics.jsonl").is_file()
    assert (run_dir / "best" / "model.pt").is_file() and (run_dir / "summary" / "report.md").is_file()
    # The head has no GPU: the finalists were scored on val and test on the worker's, not by the driver.
    assert "scoring the finalists on the cluster's GPUs (this machine has none)" in log
    scored_on = json.loads((run_dir / "driver.json").read_text())["sessions"][-1]["rescored_on"]
    assert len(scored_on) == 4 and set(scored_on.values()) <= set(workers), (scored_on, workers)


def test_a_cluster_that_can_never_have_a_gpu_refuses_the_search_in_one_line(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="ray-"))
    home, elsewhere = short / "home", short / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = cluster_env(token_env(), home)
    cpu_only = {"cpu_m5": {"resources": {"CPU": 4}, "node_config": {}, "min_workers": 0, "max_workers": 4}}
    (home / CONFIG_NAME).write_text(yaml.safe_dump(autoscaler_config(cpu_only, address, short, 4), sort_keys=False))
    head = ray_node(short / "head", "--head", f"--port={port}", f"--autoscaling-config={home / CONFIG_NAME}",
                    "--include-dashboard=false", env=env, cpus=0, gpus=0)
    runs = tmp_path / "runs"
    search = [sys.executable, "-m", "search.run", "spaces/unet_depth.yaml", "--storage", str(runs), *TINY]
    try:
        wait_for_nodes(address, 1, env)
        # On the head, joined through RAY_ADDRESS as under `ray job submit`: the autoscaler's config says no GPU.
        on_head = subprocess.run(search, cwd=ROOT, env={**env, "RAY_ADDRESS": address}, capture_output=True,
                                 text=True, timeout=300)
        # Joined from a machine where no autoscaler config is in reach, with --address.
        away = subprocess.run([*search, "--address", address, "--name", "away"], cwd=ROOT,
                              env={**env, "HOME": str(elsewhere)}, capture_output=True, text=True, timeout=300)
    finally:
        kill_node(head, short)
        shutil.rmtree(short, ignore_errors=True)

    # Ray names the head by this machine's address, not loopback: the port is the cluster's.
    at = f"the Ray cluster at HOST:{port}"
    assert on_head.returncode == 2, on_head.stderr[-3000:]
    assert re.sub(r"at \S+:", "at HOST:", on_head.stderr.strip().splitlines()[-1], count=1) == (
        f"error: {at} has no GPU and its autoscaler cannot start one (its node types, from the cluster launcher's "
        f"{LAUNCHER_CONFIG}: ray.head.default, cpu_m5): the space asks gpus_per_trial 0.25; give --gpus-per-trial 0 "
        f"to train on the CPUs, or add a node type with GPUs")
    assert away.returncode == 2, away.stderr[-3000:]
    assert re.sub(r"at \S+:", "at HOST:", away.stderr.strip().splitlines()[-1], count=1).startswith(
        f"error: {at} has no GPU, and no autoscaler config is in reach")
    assert not list(runs.glob("*/trial_*"))  # refused before any trial started


@pytest.fixture(autouse=True)
def _needs_ray_cli() -> None:
    if subprocess.run(["ray", "--version"], capture_output=True).returncode != 0:
        pytest.skip("the ray command is not on PATH")
