"""What a search prints when its output goes to a pipe or a log: what a user can act on, no noise, no colour codes."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import optuna
import pytest

from search.run import quiet_console, tidy_output
from tests.paths import pythonpath

HINT = "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/ray/session_x/driver_artifacts`"
SPACE = """
objective: {weights: {contrast_t1_t2: 0.5, contrast_t2_t1: 0.5}, mode: max}
search: {sampler: random, num_samples: 2, max_concurrent: 2, seed: 0}
scheduler: {type: none}
resources: {gpus_per_trial: 0, cpus_per_trial: 1}
fixed: {epochs: 2, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8}
params:
  lr: {float: [1.0e-4, 1.0e-3], log: true}
  lambda_cycle: {float: [5.0, 20.0]}
"""


def test_tune_output_loses_the_tmp_hint_and_colour_codes_but_keeps_warnings(monkeypatch):
    out = io.StringIO()  # not a terminal, as a pipe
    monkeypatch.setattr(sys, "stdout", out)
    with tidy_output():
        print(HINT)
        print("\x1b[36m(train_trial pid=7)\x1b[0m warning: the trial's own line")
        print("\x1b[36m(train_trial pid=7)\x1b[0m Checkpoint successfully created at: Checkpoint(path=/x)")
        print("a line in two", end="")
        print(" writes \x1b[32m[repeated 2x across cluster]\x1b[0m")
        print("no newline yet", end="")
    assert out.getvalue().splitlines() == ["(train_trial pid=7) warning: the trial's own line",
                                           "a line in two writes [repeated 2x across cluster]", "no newline yet"]
    assert sys.stdout is out


def test_optuna_says_no_more_than_its_warnings():
    said: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda record: said.append(record.getMessage())
    before = optuna.logging.get_verbosity()
    logging.getLogger("optuna").addHandler(catch)
    try:
        quiet_console()
        optuna.create_study()  # "A new study created in memory with name: ..." at INFO
        optuna.logging.get_logger("optuna").warning("a warning stays")
    finally:
        logging.getLogger("optuna").removeHandler(catch)
        optuna.logging.set_verbosity(before)
    assert said == ["a warning stays"]


@pytest.mark.slow  # a real search in a subprocess
def test_a_piped_search_is_quiet_and_its_report_draws_the_runs_study(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    env = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "1"}
    p = subprocess.run([sys.executable, "-m", "search.run", str(space), "--storage", str(tmp_path / "runs")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    said = p.stdout + p.stderr
    for noise in ("A new study created", "To visualize your results with TensorBoard", "\x1b[",
                  "Checkpoint successfully created"):
        assert noise not in said, noise
    assert "winner " in p.stdout and "report: " in p.stdout
    summary = tmp_path / "runs" / "tiny" / "summary"
    report = (summary / "report.md").read_text()
    assert "From the run's Optuna study `tiny`: its 2 complete trials" in report
    assert (summary / "parallel_coordinates.png").stat().st_size > 1000
