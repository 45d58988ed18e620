"""`python -m cyclegan.train` into a pipe or a log: a line an epoch, where a progress bar would say nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cyclegan.train import epoch_line
from tests.paths import pythonpath

TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8"]


@pytest.mark.slow  # trains in a subprocess
def test_piped_training_prints_a_line_an_epoch(tmp_path):
    env = {**os.environ, "PYTHONPATH": pythonpath(), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "cyclegan.train", *TINY, "--set", "epochs=2", "--out",
                        str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("epoch ")]
    assert [x.split(":")[0] for x in lines] == ["epoch 1/2", "epoch 2/2"], p.stderr
    assert "loss_G " in lines[0] and lines[0].endswith(" s)")


def test_an_epoch_line_rounds_its_figures():
    line = epoch_line({"epoch": 3, "loss_G": 1.234567, "loss_D": 0.5, "train_seconds": 2.25, "val_seconds": 1.0}, 10)
    assert line == "epoch 3/10: loss_G 1.23, loss_D 0.5 (3.2 s)"
