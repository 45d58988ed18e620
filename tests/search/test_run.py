"""The search as a user types it: real Ray Tune, real Optuna, tiny trials on the CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.paths import pythonpath

pytestmark = pytest.mark.slow  # real searches in subprocesses, each starting Ray

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8",
        "--gpus-per-trial", "0", "--cpus-per-trial", "1"]


def run(*args: str, cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def trials(run_dir: Path) -> list[dict]:
    with (run_dir / "summary" / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_search_end_to_end_leaves_summary_best_and_events(tmp_path):
    # The shipped space, shortened: ASHA's grace period shrinks to one epoch, so weak trials stop after it.
    p = run("search.run", str(ROOT / "spaces" / "unet_depth.yaml"), "--num-samples", "4", "--max-concurrent", "1",
            "--set", "epochs=2", *TINY, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "unet_depth"
    rows = trials(run_dir)
    assert len(rows) == 4
    assert {r["status"] for r in rows} <= {"finished", "stopped early"}
    assert any(r["status"] == "stopped early" for r in rows), [r["last_epoch"] for r in rows]
    report = (run_dir / "summary" / "report.md").read_text()
    assert "## Winner" in report and "study V4 SSIM" in report
    # Test figures carry their spread over slices; the winner's curves and Optuna's plots are drawn.
    assert " ± " in report and all(float(r["test_ssim_t1_t1_sd"]) >= 0 for r in rows if r["test_objective"])
    for picture in ("curves.png", "importances.png", "parallel_coordinates.png", "samples.png"):
        assert (run_dir / "summary" / picture).stat().st_size > 1000, picture
        assert f"]({picture})" in report, picture
    best = run_dir / "best"
    for name in ("model.pt", "config.json", "metrics.json", "split.json", "samples.png"):
        assert (best / name).is_file(), name
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["test"]["objective"] > 0 and metrics["trial_id"] in {r["trial_id"] for r in rows}
    for trial_dir in run_dir.glob("trial_*"):
        assert list(trial_dir.glob("events.out.tfevents.*")), trial_dir  # its own TensorBoard run
        assert (trial_dir / "split.json").is_file() and (trial_dir / "config.json").is_file()

    # The export translates new slices as is, and can be made again from the run.
    slices = tmp_path / "slices"
    slices.mkdir()
    from PIL import Image

    Image.new("L", (40, 50), 90).save(slices / "a.png")
    t = run("cyclegan.translate", "--checkpoint", str(best), "--direction", "t2-t1", str(slices / "a.png"),
            "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert t.returncode == 0, t.stderr
    assert Image.open(tmp_path / "out" / "a.png").size == (40, 50)
    finished = [r["trial_id"] for r in rows if r["status"] == "finished"]
    other = next((t for t in finished if t != metrics["trial_id"]), metrics["trial_id"])
    e = run("search.export", str(run_dir), "--out", str(tmp_path / "again"), "--trial", other, cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["trial_id"] == other
    # A trial stopped before its first checkpoint has nothing to export, and says so.
    stopped = next(r["trial_id"] for r in rows if r["status"] == "stopped early")
    e = run("search.export", str(run_dir), "--out", str(tmp_path / "none"), "--trial", stopped, cwd=tmp_path)
    assert e.returncode == 2 and f"trial {stopped} left no checkpoint" in e.stderr


def test_the_studys_four_runs_are_reported_beside_the_studys_numbers(tmp_path, study_data):
    # --data relative to where the user stands, though every trial runs in a folder of its own.
    (tmp_path / "slices").symlink_to(study_data)
    # Eight samples of four points: each runs twice, the second time with seed 1.
    p = run("search.run", str(ROOT / "spaces" / "study_v1_v4.yaml"), "--data", "slices", "--set", "epochs=1",
            *TINY, "--max-concurrent", "2", "--num-samples", "8", "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = trials(tmp_path / "runs" / "study_v1_v4")
    assert sorted(r["batch_size"] for r in rows) == ["2", "2", "2", "2", "40", "40", "5", "5"]
    assert sorted(r["seed"] or "0" for r in rows) == ["0"] * 4 + ["1"] * 4  # no seed in the config: seed 0
    report = (tmp_path / "runs" / "study_v1_v4" / "summary" / "report.md").read_text()
    assert "0.94" in report and "33.09" in report  # the study's Table 3, V4
    assert "input slice, as the study did" in report  # unpaired data: the weak yardstick is named
    for run_name, cycle_loss in (("V1", "5.10"), ("V2", "4.80"), ("V3", "3.85"), ("V4", "3.75")):
        line = next(x for x in report.splitlines() if x.startswith(f"| {run_name} |"))
        assert f"/ {cycle_loss}" in line  # our final loss beside the study's Table 2
    # The run-to-run spread of each point over its two seeds.
    seeds = report.split("## Configurations run with several seeds")[1].split("##")[0]
    for run_name in ("V1", "V2", "V3", "V4"):
        line = next(x for x in seeds.splitlines() if x.startswith(f"| {run_name} | 0, 1 |"))
        assert line.count(" ± ") >= 1, line


@pytest.mark.parametrize("args,match", [
    (["missing.yaml"], "missing.yaml: (file): cannot read it"),
    (["SPACE", "--set", "unet_depth=zero"], "unet_depth='zero' has the wrong type"),
    (["SPACE", "--set", "colour=red"], "unknown key 'colour'"),
    (["SPACE", "--data", "no/such/folder"], "no/such/folder: no such data folder"),
])
def test_bad_input_is_refused_in_one_line_before_ray_starts(tmp_path, args, match):
    args = [str(ROOT / "spaces" / "unet_depth.yaml") if a == "SPACE" else a for a in args]
    p = run("search.run", *args, "--storage", str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert match in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("*/experiment_state-*"))


def terminated_in_saved_state(run_dir: Path) -> set[str]:
    states = sorted(run_dir.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
    except (json.JSONDecodeError, KeyError, OSError):
        return set()  # being rewritten right now
    return {t["trial_id"] for t in (json.loads(d) if isinstance(d, str) else d for d, _ in trials)
            if t.get("status") == "TERMINATED"}


def test_resume_after_the_driver_is_killed_reruns_no_finished_trial(tmp_path):
    args = ["search.run", str(ROOT / "spaces" / "unet_depth.yaml"), "--num-samples", "4", "--max-concurrent", "1",
            "--set", "epochs=4", *TINY, "--storage", str(tmp_path / "runs"), "--name", "killed"]
    # Ray saves the experiment's state every 10 s or more; every second here, so that the state shows a finished
    # trial while the next one still runs, however fast the trials are.
    env = {**os.environ, "PYTHONPATH": pythonpath(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "runs" / "killed"
    # "Finished" is what Ray's saved experiment state says: a trial that ended after the last snapshot is
    # still running as far as a resumed search knows, and is continued from its checkpoint, as Ray promises.
    finished_before: dict[str, str] = {}
    deadline = time.time() + 400
    while time.time() < deadline and driver.poll() is None:
        done = {f"trial_{t}" for t in terminated_in_saved_state(run_dir)}
        if done and len(list(run_dir.glob("trial_*"))) > len(done):  # and another one running
            finished_before = {name: (run_dir / name / "metrics.jsonl").read_text() for name in done}
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert finished_before

    p = run(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = trials(run_dir)
    assert len(rows) == 4 and all(r["status"] in ("finished", "stopped early") for r in rows)
    for name, text in finished_before.items():
        assert (run_dir / name / "metrics.jsonl").read_text() == text, f"{name} was run again"
