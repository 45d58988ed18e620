"""Checkpoints are never half-written: a process killed while writing one leaves the previous one whole.

    python -m pytest tests/cyclegan/test_checkpoint.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cyclegan import checkpoint
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
# A writer that saves one large checkpoint through cyclegan.checkpoint.save, as fit's report does every epoch.
WRITER = """
import sys, torch
from cyclegan import checkpoint
big = {"config": {}, "epoch": 2, "models": {"w": torch.arange(%d, dtype=torch.float32)}}
print("writing", flush=True)
checkpoint.save(sys.argv[1], big)
print("done", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    path = tmp_path / checkpoint.CHECKPOINT
    checkpoint.save(path, {"config": {}, "epoch": 1, "models": {"w": torch.ones(3)}})
    before = path.read_bytes()
    tmp = path.with_name(f".{path.name}.tmp")
    elements = 50_000_000  # 200 MB: long enough to write that the kill lands mid-file on any disk
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER % elements, str(path)], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": pythonpath()}, stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        deadline = time.time() + 60
        while time.time() < deadline and writer.poll() is None and not (tmp.exists() and tmp.stat().st_size > 0):
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)  # as the OOM killer or a lost node would: no cleanup runs
        writer.wait()
        if tmp.exists() and tmp.stat().st_size < elements * 4:
            break  # caught it mid-write
        elements *= 2  # the write finished before the kill: try a larger one
    else:
        pytest.skip("could not kill the writer mid-write on this machine")
    assert path.read_bytes() == before  # the previous checkpoint, byte for byte
    assert checkpoint.load(path)["epoch"] == 1
    with pytest.raises(checkpoint.CheckpointError, match="unreadable or truncated"):
        checkpoint.load(tmp)  # what was killed mid-write is half a file, and reads as one
    # The next save writes over the stray temporary file and replaces the checkpoint whole.
    checkpoint.save(path, {"config": {}, "epoch": 3, "models": {"w": torch.zeros(2)}})
    assert checkpoint.load(path)["epoch"] == 3 and not tmp.exists()
