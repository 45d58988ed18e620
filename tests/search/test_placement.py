"""Trials that ask for fractional GPUs are placed as Ray's resources say, on a real Ray cluster of two GPUs.

The GPUs are declared (`ray start --num-gpus 2`), not real: Ray schedules against them, assigns GPU ids and sets
CUDA_VISIBLE_DEVICES exactly as on a GPU node, while torch in the trials finds no GPU and trains on the CPU.
`python -m search.run --address` runs tiny trials on it, with a fixed `--gpus-per-trial 0.5` and with `auto`
(each trial's share from its estimated memory), more trials than fit at once. From each trial's
`resources.json`: it got the share it asked for (Ray's own `get_assigned_resources()` agrees), its
CUDA_VISIBLE_DEVICES is the GPU Ray assigned, the trials spread over both GPUs, and at no moment did the
trials on one GPU hold more than the whole GPU.

    python -m pytest tests/search/test_placement.py -q
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.memory import DataSize, GiB
from search.packing import RAY_UNITS, gpu_share, ray_units
from tests.raynodes import free_port, kill_node, ray_node, token_env, wait_for_nodes

pytestmark = pytest.mark.slow  # a Ray cluster of declared GPUs and searches on it

TINY = "resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8, pool_size: 4"
SPACE = f"""
objective: {{metric: ssim_t1_t1, mode: max}}
search: {{max_concurrent: 6}}                  # Tune then asks Ray for all six at once, and Ray decides
scheduler: {{type: none}}
resources: {{gpus_per_trial: 0.5, cpus_per_trial: 1}}
checkpoint: {{every: 1, keep: 1}}
select: {{top_k: 1}}
fixed: {{epochs: 1, batch_size: 4, {TINY}}}
points: [{{seed: 0}}, {{seed: 1}}, {{seed: 2}}, {{seed: 3}}, {{seed: 4}}, {{seed: 5}}]
"""
# Two sizes, on 3 GiB GPUs: 0.34 and 0.36 of a GPU (about 1.02 and 1.07 GiB with the CUDA context), so two fit
# on a GPU and a third never does.
SMALL, LARGE = "ngf: 8, ndf: 8, batch_size: 4", "ngf: 16, ndf: 16, batch_size: 16"
AUTO_SPACE = f"""
objective: {{metric: ssim_t1_t1, mode: max}}
search: {{max_concurrent: 4}}
scheduler: {{type: none}}
resources: {{gpus_per_trial: auto, trials_per_gpu: 4, gpu_memory_gib: 3, cpus_per_trial: 1}}
checkpoint: {{every: 1, keep: 1}}
select: {{top_k: 1}}
fixed: {{epochs: 1, resize: 32, unet_depth: 5, disc_layers: 2, pool_size: 4}}
points: [{{{SMALL}}}, {{{LARGE}}}, {{{SMALL}, seed: 1}}, {{{LARGE}, seed: 1}}]
"""


@pytest.fixture(scope="module")
def two_gpu_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster declaring 2 GPUs and 8 CPUs (so GPUs, not CPUs, limit how many trials run)."""
    if subprocess.run(["ray", "--version"], capture_output=True).returncode != 0:
        pytest.skip("the ray command is not on PATH")
    env = token_env()
    address = f"127.0.0.1:{free_port()}"
    short = Path(tempfile.mkdtemp(prefix="ray-"))  # Ray's Unix socket paths may not exceed 107 bytes
    head = ray_node(short / "head", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                    env=env, cpus=8, gpus=2)
    try:
        wait_for_nodes(address, 1, env)
        yield address, env
    finally:
        kill_node(head, short / "head")
        shutil.rmtree(short, ignore_errors=True)


def search(space: str, cluster: tuple[str, dict[str, str]], tmp_path: Path, *flags: str) -> list[dict]:
    """Runs `python -m search.run` on the cluster; returns each trial's resources.json, with its config."""
    address, env = cluster
    (tmp_path / "s.yaml").write_text(space)
    p = subprocess.run([sys.executable, "-m", "search.run", str(tmp_path / "s.yaml"), "--address", address,
                        "--storage", str(tmp_path / "runs"), *flags], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    with (tmp_path / "runs" / "s" / "summary" / "trials.csv").open() as f:
        shares = {row["trial_id"]: float(row["gpu_share"]) for row in csv.DictReader(f)}
    records = []
    for trial in sorted((tmp_path / "runs" / "s").glob("trial_*")):
        record = json.loads((trial / "resources.json").read_text())
        record["config"] = json.loads((trial / "config.json").read_text())
        assert shares[trial.name.removeprefix("trial_")] == record["gpu_share"]  # the summary shows each share
        records.append(record)
    return records


def check_placement(records: list[dict]) -> dict[str, int]:
    """What holds for every search on the cluster; returns the most trials seen on one GPU at once."""
    for r in records:
        assert r["share_from"] == "ray" and r["gpu_share"] > 0
        assert ray_units(r["assigned"]["GPU"]) == ray_units(r["gpu_share"]), r  # what Ray's scheduler reserved
        assert len(r["gpu_ids"]) == 1 and r["gpu_ids"][0] in ("0", "1"), r  # a share of one GPU, never two
        assert r["cuda_visible_devices"] == r["gpu_ids"][0], r
        assert r["device"] == "cpu" and r["memory_fraction"] is None  # torch finds no GPU: no cap to set
        assert r["started"] < r["ended"]
    assert {r["gpu_ids"][0] for r in records} == {"0", "1"}, "the trials spread over both GPUs"
    # Sweep the trials' lifetimes (inside the time Ray held their resources): ends before starts at a tie.
    events = sorted([(r["started"], 1, r) for r in records] + [(r["ended"], -1, r) for r in records],
                    key=lambda e: (e[0], e[1]))
    held = {"0": 0, "1": 0}
    running = {"0": 0, "1": 0}
    most = {"0": 0, "1": 0}
    for _, sign, r in events:
        gpu = r["gpu_ids"][0]
        held[gpu] += sign * ray_units(r["gpu_share"])
        running[gpu] += sign
        assert held[gpu] <= RAY_UNITS, f"GPU {gpu} held {held[gpu]} / {RAY_UNITS} units"
        most[gpu] = max(most[gpu], running[gpu])
    return most


def test_half_gpu_trials_are_placed_two_to_a_gpu(two_gpu_cluster: tuple[str, dict[str, str]],
                                                 tmp_path: Path) -> None:
    records = search(SPACE, two_gpu_cluster, tmp_path)
    assert len(records) == 6
    assert all(r["gpu_share"] == 0.5 and r["gpus_per_trial"] == 0.5 for r in records)
    most = check_placement(records)
    assert max(most.values()) == 2, f"two halves shared a GPU at once: {most}"


def test_auto_trials_get_the_share_their_estimated_memory_asks(two_gpu_cluster: tuple[str, dict[str, str]],
                                                               tmp_path: Path) -> None:
    records = search(AUTO_SPACE, two_gpu_cluster, tmp_path)
    assert len(records) == 4
    data = DataSize.of(load_data("synthetic", 32))  # each trial's estimate counts its data and validation
    for r in records:
        cfg = TrainConfig.from_dict(r["config"])
        assert r["gpus_per_trial"] == "auto" and r["gpu_bytes"] == 3 * GiB
        assert r["gpu_share"] == gpu_share(cfg, 3 * GiB, most_per_gpu=4, data=data), r
    assert sorted({r["gpu_share"] for r in records}) == [0.37, 0.39]  # two sizes: two fit on a GPU, three never
    check_placement(records)
