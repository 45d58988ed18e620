"""Interrupting and resuming one training run: the CLI as a user types it, and checkpoints that change device.

    python -m pytest tests/cyclegan/test_resume.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cyclegan import checkpoint
from cyclegan.config import ConfigError, TrainConfig
from cyclegan.data import load_data
from cyclegan.train import ImagePool, fit
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8"]
ENV = {**os.environ, "PYTHONPATH": pythonpath(), "OMP_NUM_THREADS": "1"}


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cyclegan.train", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # trains twice in subprocesses
def test_the_readme_resume_line_continues_a_run_with_its_own_config_and_prints_a_line_an_epoch(tmp_path):
    out = tmp_path / "one"
    first = train("--data", "synthetic", *TINY, "--set", "epochs=2", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # Piped (as here), a line an epoch on stderr, not minutes of silence.
    assert [x.split(":")[0] for x in first.stderr.splitlines() if x.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    # The README's line: no --set, no --config. It continues with OUT/config.json, not the defaults.
    again = train("--out", str(out), "--resume", "--set", "epochs=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert TrainConfig.load(out / "config.json").resize == 32
    # Told otherwise, it refuses in one line that names the setting and both values.
    other = train("--out", str(out), "--resume", "--set", "ngf=16", cwd=tmp_path)
    assert other.returncode == 2 and "ngf=16, not 8" in other.stderr and len(other.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # trains, interrupts and resumes in subprocesses
def test_ctrl_c_ends_a_training_run_in_one_line_with_exit_130_and_it_resumes(tmp_path):
    out = tmp_path / "one"
    p = subprocess.Popen([sys.executable, "-m", "cyclegan.train", *TINY, "--set", "epochs=200", "--out", str(out)],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    deadline = time.time() + 240
    line = ""
    while time.time() < deadline and not line.startswith("epoch 1/"):  # polled: the first epoch is saved
        line = p.stderr.readline()
        assert line or p.poll() is None, "training ended before its first epoch"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "stopping after this epoch" in err  # at a safe point: a write to the checkpoint is never cut
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted after epoch "), err
    assert f"python -m cyclegan.train --out {out} --resume" in err
    done = len((out / "metrics.jsonl").read_text().splitlines())
    again = train("--out", str(out), "--resume", "--set", f"epochs={done + 1}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["epoch"] == done + 1


def test_a_checkpoint_whose_pools_hold_bf16_fakes_resumes_on_the_cpu_in_fp32(tiny_cfg, tmp_path):
    # What a GPU run (bf16 autocast) leaves: its pools hold bf16 fakes. Resuming it on the CPU runs in fp32.
    cfg = tiny_cfg.replace(epochs=1)
    data = load_data("synthetic", cfg.resize)
    path = tmp_path / checkpoint.CHECKPOINT
    fit(cfg, data, device="cpu", report=lambda metrics, save: save(path))
    state = checkpoint.load(path)
    assert all(p["count"] == cfg.pool_size for p in state["pools"])  # full: the next query swaps
    for pool in state["pools"]:
        pool["images"] = pool["images"].to(torch.bfloat16)
    checkpoint.save(path, state)
    seen = []
    fit(cfg.replace(epochs=3), data, device="cpu", resume=checkpoint.load(path),
        report=lambda metrics, save: (seen.append(metrics["epoch"]), save(path)))
    assert seen == [2, 3]
    assert all(p["images"].dtype == torch.float32 for p in checkpoint.load(path)["pools"])


def test_the_image_pool_loses_no_stored_fake():
    # Every image the pool held or was given is, after a query, either still held or given back: none is lost
    # and none comes out twice. A repeated slot in one write broke this in about 19% of queries at batch 5.
    torch.manual_seed(0)
    pool = ImagePool(50)
    pool.query(torch.arange(50.0).view(50, 1, 1, 1))
    next_id = 50.0
    for _ in range(300):
        batch = torch.arange(next_id, next_id + 5).view(5, 1, 1, 1)
        next_id += 5
        before = sorted([*pool.stored.flatten().tolist(), *batch.flatten().tolist()])
        out = pool.query(batch)
        assert sorted([*pool.stored.flatten().tolist(), *out.flatten().tolist()]) == before
    # A batch larger than the pool keeps the rule too.
    small = ImagePool(3)
    small.query(torch.arange(3.0).view(3, 1, 1, 1))
    batch = torch.arange(3.0, 11.0).view(8, 1, 1, 1)
    out = small.query(batch)
    assert sorted([*small.stored.flatten().tolist(), *out.flatten().tolist()]) == list(map(float, range(11)))


@pytest.mark.parametrize(("knobs", "match"), [
    ({"resize": 33, "unet_depth": 5}, "unet_depth=5 needs resize divisible by 2**5 = 32, got resize=33"),
    ({"resize": 48, "unet_depth": 5}, "or unet_depth <= 4"),
    ({"resize": 32, "unet_depth": 6}, "unet_depth=6 needs resize >= 2**6"),
])
def test_a_resize_the_unet_cannot_halve_evenly_is_refused_by_the_config(knobs, match):
    with pytest.raises(ConfigError, match=match.replace("*", r"\*")):
        TrainConfig(disc_layers=2, **knobs)
    TrainConfig(resize=48, unet_depth=4, disc_layers=2)  # 48 = 3 * 2**4: the U-Net halves it four times
