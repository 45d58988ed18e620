"""A real search stopped with Ctrl-C (SIGINT) and continued with --resume; its Optuna study against its trials.

    python -m pytest tests/search/test_interrupt.py -q
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from search.study import TUNE_TRIAL_ID
from tests.paths import pythonpath

SPACE = """
objective: {metric: ssim_t1_t1, mode: max}
search: {sampler: tpe, num_samples: 3, max_concurrent: 1, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
checkpoint: {every: 1, keep: 2}
select: {top_k: 1}
fixed: {batch_size: 4, pool_size: 4}
params:
  lr: {float: [1.0e-4, 1.0e-3], log: true}
"""
TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8",
        "--set", "epochs=4", "--gpus-per-trial", "0", "--cpus-per-trial", "1"]
ENV = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}


def ctrl_c(command: list[str], cwd: Path, ready: Callable[[], bool]) -> tuple[int, str, str]:
    """Runs `python -m *command`, sends it SIGINT once `ready()`; returns its (exit code, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", *command], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not ready():
            time.sleep(0.2)
        assert p.poll() is None, "the search ended before it was ready to interrupt"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, out, err


@pytest.mark.slow  # a real search, interrupted and resumed
def test_ctrl_c_exits_130_exports_nothing_and_resume_leaves_the_study_agreeing_with_the_run(tmp_path: Path) -> None:
    space = tmp_path / "stop.yaml"
    space.write_text(SPACE)
    command = ["search.run", str(space), *TINY, "--storage", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "stop"
    # Polled: a trial's first epoch has been reported.
    code, _, err = ctrl_c(command, tmp_path, lambda: any(f.stat().st_size for f in run_dir.glob("trial_*/result.json")))
    assert code == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("interrupted: ") and "nothing exported" in lines[-1], err[-3000:]
    assert lines[-1].endswith(f"Continue with: python -m {' '.join(command)} --resume"), lines[-1]
    assert "Tuner.restore(" not in err and "Traceback" not in err
    assert not (run_dir / "best").exists() and not (run_dir / "summary").exists()
    # The trial that was running is still running to the study: --resume tells it how it ends.
    study = optuna.load_study(study_name="stop", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert any(t.state.name == "RUNNING" for t in study.trials)

    again = subprocess.run([sys.executable, "-m", *command, "--resume"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    study = optuna.load_study(study_name="stop", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    told = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    assert set(told) == set(rows) and len(rows) == 3
    expected = {"finished": "COMPLETE", "stopped early": "PRUNED", "error": "FAIL", "not started": "FAIL"}
    for trial_id, row in rows.items():
        t = told[trial_id]
        assert t.state.name == expected[row["status"]], (trial_id, row["status"], t.state)
        if t.state.name != "FAIL":
            assert math.isclose(t.value, float(row["last_objective"]), rel_tol=1e-9), (trial_id, t.value, row)
            assert t.user_attrs["epochs_run"] == int(row["last_epoch"])


@pytest.mark.slow  # search.run in subprocesses
@pytest.mark.parametrize("overrides", [["--set", "resize=33", "--set", "unet_depth=5"], ["--set", "resize=48"]])
def test_a_config_the_networks_cannot_build_is_refused_in_one_line_before_ray_starts(tmp_path, overrides):
    start = time.time()
    p = subprocess.run([sys.executable, "-m", "search.run", str(Path(__file__).parents[2] / "spaces/unet_depth.yaml"),
                        "--gpus-per-trial", "0", *overrides, "--storage", str(tmp_path / "runs")],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-3000:]
    assert "needs resize divisible by 2**" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "runs").glob("*/experiment_state-*")) and time.time() - start < 60


def test_reconcile_rewrites_what_the_study_was_told_before_a_killed_driver_to_what_the_run_ended_with(tmp_path):
    # A driver killed after telling the study, before Ray saved the run: the resumed run ran one trial ASHA had
    # stopped (PRUNED at 0.3) to its end (0.5), and one the study had marked failed to its end (0.7).
    from types import SimpleNamespace

    from search.study import StudyStore, reconcile_study

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    results = []
    for tune_id, told, value in (("a", "PRUNED", 0.3), ("b", "FAIL", None), ("c", "COMPLETE", 0.9)):
        t = study.ask()
        t.set_user_attr(TUNE_TRIAL_ID, tune_id)
        if told == "PRUNED":
            t.report(value, 2)
        study.tell(t, value if told == "COMPLETE" else None, state=optuna.trial.TrialState[told])
    for tune_id, value in (("a", 0.5), ("b", 0.7), ("c", 0.9)):
        results.append(SimpleNamespace(metrics={"trial_id": tune_id, "epoch": 4, "objective": value}, error=None,
                                       config={"epochs": 4}, path=str(tmp_path / f"trial_{tune_id}")))
    assert reconcile_study(StudyStore(storage, "s", "sqlite"), results) == [0, 1]
    reopened = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    got = {t.user_attrs[TUNE_TRIAL_ID]: (t.state.name, t.value, t.user_attrs.get("epochs_run"))
           for t in reopened.trials}
    assert got == {"a": ("COMPLETE", 0.5, 4), "b": ("COMPLETE", 0.7, 4), "c": ("COMPLETE", 0.9, None)}


@pytest.mark.slow  # a real search, interrupted once a checkpoint is in
def test_ctrl_c_with_export_on_interrupt_exports_the_best_so_far_from_slices_ray_held(tmp_path: Path,
                                                                                       study_data: Path) -> None:
    # Slices read from a folder reach the driver as views of Ray's object store; Ray stops while they are scored.
    space = tmp_path / "stop.yaml"
    space.write_text(SPACE)
    command = ["search.run", str(space), *TINY, "--data", str(study_data), "--storage", str(tmp_path / "runs"),
               "--export-on-interrupt"]
    run_dir = tmp_path / "runs" / "stop"
    # Polled: two checkpoints are in the run's storage. A trial writes its checkpoint there before the driver has its
    # result, and a Ctrl-C in between leaves the driver without it (CI's loaded cores hit that window). The trial
    # writes a second only after the driver asked for its next result, so the first is by then the driver's.
    code, out, err = ctrl_c(command, tmp_path,
                            lambda: len(list(run_dir.glob("trial_*/checkpoint_*/checkpoint.pt"))) >= 2)
    assert code == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("interrupted: ") and "nothing exported" not in lines[-1], err[-3000:]
    assert "Traceback" not in err, err[max(0, err.find("Traceback") - 1000):][:4000]
    assert "winner " in out, err[-3000:]
    assert (run_dir / "best" / "model.pt").is_file() and (run_dir / "summary" / "report.md").is_file()
