"""`search.prewarm` starts the fused norm's warm-up for a search's first trials where they will run on this
machine's GPU, and ends it with the command: what it starts, and what `driver.json` is told.

    python -m pytest tests/search/test_prewarm.py -q
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from cyclegan.memory import DataSize
from search import prewarm
from search.space import load_space

ROOT = Path(__file__).resolve().parents[2]


def _args(address: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(address=address, data_size=DataSize.of_phantom())


@pytest.fixture
def gpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prewarm, "has_nvidia_gpu", lambda: True)


def test_nothing_starts_where_the_first_trials_will_not_use_this_machines_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = load_space(ROOT / "spaces" / "full.yaml").with_overrides({"resize": 32, "unet_depth": 5})
    cpus = gpus.replace_search(gpus_per_trial=0)
    monkeypatch.setattr(prewarm, "has_nvidia_gpu", lambda: True)
    assert prewarm.start(gpus, _args(address="auto"), 4) is None  # a cluster's trials run on its other machines
    assert prewarm.start(cpus, _args(), 4) is None
    monkeypatch.setattr(prewarm, "has_nvidia_gpu", lambda: False)
    assert prewarm.start(gpus, _args(), 4) is None


def test_the_warm_up_runs_the_first_configs_and_reports_what_it_did(gpu_here: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine's answer, whatever it has: no GPU to compile on
    space = load_space(ROOT / "spaces" / "full.yaml").with_overrides({"resize": 32, "unet_depth": 5})
    warmup = prewarm.start(space, _args(), 4)
    assert warmup is not None
    folder = warmup._folder
    deadline = time.monotonic() + 120
    while warmup._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    summary = warmup.end()
    assert summary == {"exit_code": 0, "warmed": 0, "seconds": 0.0, "why": "no GPU"}
    assert warmup.end() is summary and not folder.exists()


def test_a_warm_up_still_running_at_the_end_is_stopped(gpu_here: None) -> None:
    space = load_space(ROOT / "spaces" / "full.yaml").with_overrides({"resize": 32, "unet_depth": 5})
    warmup = prewarm.start(space, _args(), 4)
    start = time.monotonic()
    summary = warmup.end()  # at once: the child is still importing torch
    assert summary["exit_code"] != 0 and time.monotonic() - start < 10
