"""Trials get their data through Ray's object store, never from `--data`: a real search whose data folder is gone
before any trial starts, interrupted and resumed (the resumed driver reads the folder again).

    python -m pytest tests/search/test_data_handoff.py -q
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from tests.paths import pythonpath

pytestmark = pytest.mark.slow  # real searches in subprocesses, each starting Ray

SPACE = """
objective: {metric: ssim_t1_t1, mode: max}
search: {sampler: tpe, num_samples: 2, max_concurrent: 1, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
checkpoint: {every: 1, keep: 2}
select: {top_k: 2}
resources: {gpus_per_trial: 0, cpus_per_trial: 1}
fixed: {batch_size: 4, pool_size: 4, epochs: 3, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8}
params:
  lr: {float: [1.0e-4, 1.0e-3], log: true}
"""
# search.run with its one read of --data followed by the folder's removal: whatever runs after it (the trials, the
# finalists' scoring, the export) has only what was read.
DRIVER = """
import shutil, sys
from search import run

read = run.read_data
def read_then_remove(source):
    slices = read(source)
    shutil.rmtree(source)
    return slices
run.read_data = read_then_remove
sys.exit(run.main(sys.argv[1:]))
"""
ENV = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}


def test_trials_never_read_the_data_folder_and_a_resumed_search_reads_it_again(tmp_path: Path,
                                                                                study_data: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "driver.py").write_text(DRIVER)
    data = tmp_path / "slices"
    shutil.copytree(study_data, data)
    command = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "space.yaml"), "--data", str(data),
               "--storage", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "space"
    p = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:  # a trial has trained and reported an epoch
            if any(f.stat().st_size for f in run_dir.glob("trial_*/result.json")):
                break
            time.sleep(0.2)
        assert p.poll() is None, "the search ended before its first trial reported"
        assert not data.exists()  # gone before the trial started: it trained on what the driver read
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert f"data: read {data} in " in err and ": 71 slices for train, val and test" in err  # 89 less gaps

    shutil.copytree(study_data, data)  # the resumed driver reads it again, and removes it again
    again = subprocess.run([*command, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"data: read {data} in " in again.stderr and not data.exists()
    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"finished", "stopped early"}, rows
    assert any(r["test_objective"] for r in rows)  # finalists scored on the slices read, not the folder
    assert json.loads((run_dir / "best" / "metrics.json").read_text())["data"] == str(data)
    for trial in run_dir.glob("trial_*"):
        assert str(data) not in (trial / "params.json").read_text()  # no path in what a trial is given
        assert json.loads((trial / "split.json").read_text())["source"] == str(data)  # the name, as a record
        assert json.loads((trial / "resources.json").read_text())["data_seconds"] >= 0


def test_the_driver_keeps_the_object_stores_copy_of_the_slices_not_a_second_one(local_ray, study_data: Path) -> None:
    import ray

    from cyclegan.data import read_data
    from search.run import hand_over
    from search.select import Datasets

    slices = read_data(study_data)
    own = weakref.ref(slices.held_out["val"]["T1"][0])
    to_trials, kept = hand_over(slices)
    del slices
    assert own() is None  # nothing holds the driver's own copy: it is freed
    fresh = read_data(study_data)
    for got in (kept, ray.get(to_trials)):  # the driver's and a trial's: the slices read, in the store (read-only)
        assert got.names == fresh.names and got.paired == fresh.paired
        assert all(np.array_equal(a, b) and not a.flags.writeable
                   for d in ("T1", "T2") for a, b in zip(got.train[d], fresh.train[d]))
        assert np.array_equal(got.held_out["test"]["T2"][1], fresh.held_out["test"]["T2"][1])
    assert hand_over("synthetic") == ("synthetic", "synthetic")  # the phantom is drawn in each trial
    # What the search's end (or an interrupted search's export) scores and exports from, Ray stopping meanwhile: a
    # copy of its own of val and test, no training slice.
    held = Datasets(kept).data
    assert held.held_out["val"]["T1"][0].flags.writeable
    assert np.array_equal(held.held_out["val"]["T1"][0], fresh.held_out["val"]["T1"][0])
    assert held.names == kept.names and all(not held.train[d] for d in ("T1", "T2"))
    for part in ("val", "test"):
        for d in ("T1", "T2"):
            for a, b in zip(held.held_out[part][d], kept.held_out[part][d]):
                assert np.array_equal(a, b) and a.flags.writeable and not np.shares_memory(a, b)
