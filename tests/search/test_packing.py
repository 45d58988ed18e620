"""Each trial's GPU share from its estimated memory (`gpus_per_trial: auto`): the arithmetic on real configs, and a
real local search that asks for auto on a machine without a GPU.

    python -m pytest tests/search/test_packing.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cyclegan.config import TrainConfig
from cyclegan.memory import CONTEXT_BYTES, GiB, estimate_memory
from search import packing
from search.packing import (
    RAY_UNITS,
    AutoResources,
    EstimatesAhead,
    allocator_fraction,
    gpu_share,
    needed_bytes,
    ray_amount,
    ray_units,
    trial_config,
)
from search.space import load_space
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
TINY = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, pool_size=4)


def share_bytes(share: float, gpu_bytes: int) -> float:
    return ray_units(share) / RAY_UNITS * gpu_bytes  # the memory Ray reserves for the trial, in its fixed point


def test_a_share_is_the_estimate_and_the_context_over_the_gpu_rounded_up_to_hundredths() -> None:
    cfg = TrainConfig(resize=256, unet_depth=8, batch_size=5)
    assert needed_bytes(cfg) == estimate_memory(cfg) + CONTEXT_BYTES
    for gib in (16, 22, 40):
        share = gpu_share(cfg, gib * GiB, most_per_gpu=100)
        units = ray_units(share)
        assert units % 100 == 0, share  # whole hundredths
        assert share_bytes(share, gib * GiB) >= needed_bytes(cfg) > (units - 100) / RAY_UNITS * gib * GiB


@pytest.mark.parametrize("knob,values", [("batch_size", [1, 2, 8, 32]), ("resize", [64, 128, 256])])
def test_shares_grow_with_batch_and_resize(knob: str, values: list[int]) -> None:
    configs = [TrainConfig(unet_depth=6, **{knob: v}) for v in values]
    needs = [needed_bytes(c) for c in configs]
    shares = [gpu_share(c, 16 * GiB, most_per_gpu=100) for c in configs]
    assert needs == sorted(needs) and needs[0] < needs[-1]
    assert shares == sorted(shares) and shares[0] < shares[-1], shares


@pytest.mark.parametrize("most", range(1, 101))
def test_the_floor_lets_trials_per_gpu_small_trials_share_a_gpu_and_not_one_more(most: int) -> None:
    units = ray_units(gpu_share(TINY, 1024 * GiB, most_per_gpu=most))  # a GPU so large that the floor decides
    assert most * units <= RAY_UNITS < (most + 1) * units


def test_a_trial_bigger_than_a_gpu_gets_one_whole_gpu_and_a_warning(capsys: pytest.CaptureFixture) -> None:
    cfg = TrainConfig(resize=256, unet_depth=8, batch_size=32)
    small_gpu = needed_bytes(cfg) // 2
    assert gpu_share(cfg, small_gpu) == 1.0
    resources = AutoResources(cpus=1, gpu_bytes=small_gpu)
    assert resources(cfg.to_dict())["gpu"] == 1.0
    assert resources(cfg.to_dict())["gpu"] == 1.0  # Tune asks again when it resets a trial: warned once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: a trial needs an estimated") and "batch_size=32" in err[0]


@pytest.mark.parametrize("k", [1, 2, 4, 5, 10, 20])
def test_k_equal_trials_of_a_kth_of_a_gpu_add_up_to_exactly_one_gpu(k: int) -> None:
    gpu_bytes = needed_bytes(TINY) * k  # each needs exactly 1/k of this GPU
    share = gpu_share(TINY, gpu_bytes, most_per_gpu=k)
    assert k * ray_units(share) == RAY_UNITS, share


def test_every_amount_is_read_by_ray_as_the_units_meant() -> None:
    # Ray truncates amount * 10000 (fixed_point.h): 0.57 alone would be 5699 units, so 0.57 + 0.43 < 1 GPU.
    assert ray_units(0.57) == 5699
    for units in range(1, RAY_UNITS + 1):
        amount = ray_amount(units)
        assert ray_units(amount) == units and abs(amount - units / RAY_UNITS) < 1e-12


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="gpu_bytes"):
        gpu_share(TINY, 0)
    for most in (0, 101):
        with pytest.raises(ValueError, match="most_per_gpu"):
            gpu_share(TINY, GiB, most_per_gpu=most)


@pytest.mark.slow  # a real search in a subprocess
def test_auto_on_a_machine_without_a_gpu_runs_the_trials_on_the_cpu(tmp_path: Path) -> None:
    # A real local Ray Tune search: Ray finds no GPU here, so auto falls back to CPU trials, with a note.
    space = tmp_path / "auto.yaml"
    space.write_text("objective: {metric: ssim_t1_t1, mode: max}\nscheduler: {type: none}\n"
                     "resources: {gpus_per_trial: auto, trials_per_gpu: 4, cpus_per_trial: 1}\n"
                     "fixed: {epochs: 1, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8, batch_size: 4, "
                     "pool_size: 4}\npoints: [{seed: 0}]\n")
    env = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "0", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "search.run", str(space), "--storage", str(tmp_path / "runs")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "note: no GPU on this machine; running trials on the CPU (gpus_per_trial auto -> 0)" in p.stderr
    (record,) = [json.loads(f.read_text()) for f in (tmp_path / "runs" / "auto").glob("trial_*/resources.json")]
    assert record["gpu_share"] == 0 and record["share_from"] == "ray" and record["memory_fraction"] is None
    assert record["gpu_ids"] == [] and record["device"] == "cpu" and record["ended"] >= record["started"]


@pytest.mark.parametrize("gib", [16, 24, 80, 141])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_capped_trials_and_their_contexts_fit_in_the_gpu(gib, k):
    gpu = gib * GiB
    fraction = allocator_fraction(1 / k, gpu)
    assert 0 < fraction < 1 / k
    assert k * (fraction * gpu + CONTEXT_BYTES) <= gpu * (1 + 1e-12)


def test_a_share_too_small_for_a_context_keeps_half_of_itself():
    assert allocator_fraction(0.01, 24 * GiB) == pytest.approx(0.005)


def _fake_nvidia_smi(folder: Path, reply: str, code: int = 0) -> Path:
    """An `nvidia-smi` that prints `reply` and records its arguments."""
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args'}\nprintf '%s\\n' '{reply}'\nexit {code}\n")
    tool.chmod(0o755)
    return folder


@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """This torch as a CUDA build; the torch child's answers are counted, not run."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    asked: list[str] = []
    monkeypatch.setattr(packing, "_gpu_bytes_from_torch", lambda: asked.append("torch") or 7 * 2**30)
    return asked


def test_the_drivers_gpu_memory_comes_from_nvidia_smi_less_the_drivers_reserve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_build: list[str]) -> None:
    # An H200 as nvidia-smi reports it: 143771 MiB, 613 of them the driver's; torch reports 150109880320 bytes.
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path, '143771, 613')}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert packing.driver_gpu_bytes() == (143771 - 613) * 2**20 and cuda_build == []
    assert (tmp_path / "args").read_text().split()[-2:] == ["-i", "3"]  # the first GPU this process may use


@pytest.mark.parametrize(("reply", "code", "visible"), [
    ("143771, 613", 6, None),  # nvidia-smi failed
    ("143771, [N/A]", 0, None),  # a driver that does not report its reserve
    ("143771, 613", 0, "MIG-4f7a1e2c-0000-0000-0000-000000000000"),  # an instance nvidia-smi's -i does not take
])
def test_where_nvidia_smi_cannot_answer_a_torch_child_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_build: list[str], reply: str, code: int,
        visible: str | None) -> None:
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path, reply, code)}:{os.environ['PATH']}")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert packing.driver_gpu_bytes() == 7 * 2**30 and cuda_build == ["torch"]


def test_a_torch_without_cuda_asks_torch_not_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU build on a GPU machine: its trials could not use the GPU, so the search must not plan on it.
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path, '143771, 613')}:{os.environ['PATH']}")
    monkeypatch.setattr(torch.version, "cuda", None)
    asked: list[str] = []
    monkeypatch.setattr(packing, "_gpu_bytes_from_torch", lambda: asked.append("torch"))
    assert packing.driver_gpu_bytes() is None and asked == ["torch"]
    assert not (tmp_path / "args").exists()


def test_the_torch_child_answers_for_this_machine() -> None:
    # Run for real: this machine's torch, through CUDA where it has a GPU.
    expected = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    assert packing._gpu_bytes_from_torch() == expected


def test_estimates_ahead_leave_the_first_waves_estimates_in_the_cache() -> None:
    space = load_space(ROOT / "spaces" / "full.yaml").with_overrides({"resize": 32, "unet_depth": 5})
    configs = space.first_configs(3)
    assert len(configs) == 3 and all(c["resize"] == 32 for c in configs)
    bad = {**configs[0], "unet_depth": 9}  # deeper than 32 px allows: skipped, left to the trial to report
    needed_bytes.cache_clear()
    ahead = EstimatesAhead([bad, *configs], None)
    deadline = time.monotonic() + 60
    while ahead.done < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ahead.stop() == 3
    misses = needed_bytes.cache_info().misses
    for c in configs:
        needed_bytes(trial_config(c), None)
    assert needed_bytes.cache_info().misses == misses  # each answered from the cache


def test_estimates_ahead_stop_after_the_estimate_under_way() -> None:
    configs = [{"resize": 32, "unet_depth": 5, "ngf": 8 + i, "ndf": 8} for i in range(200)]
    ahead = EstimatesAhead(configs, None)
    assert ahead.stop() < len(configs)


def test_the_first_configs_are_those_the_search_starts_with() -> None:
    points = load_space(ROOT / "spaces" / "study_v1_v4.yaml")
    assert points.first_configs(2) == points.trial_points()[:2]
    sampled = load_space(ROOT / "spaces" / "full.yaml")
    drawn = sampled.first_configs(8)
    assert all(2 ** c["unet_depth"] <= c["resize"] for c in drawn) and len({str(c) for c in drawn}) == 8
    # The very configs Tune's searcher gives its first trials: the space's seeded sampler, drawn in the same order.
    searcher = sampled.make_searcher()
    assert [searcher.suggest(f"trial_{i}") for i in range(8)] == drawn
