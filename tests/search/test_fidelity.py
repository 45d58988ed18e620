"""A tiny real TPE + ASHA search on the CPU: Optuna is told each trial's fidelity, the winner is chosen on val.

    python -m pytest tests/search/test_fidelity.py -q
"""

from __future__ import annotations

import csv
import json

import optuna
import pytest

from search.report import read_metrics
from tests.search.test_run import TINY, run

pytestmark = pytest.mark.slow  # a real search (ASHA) in a subprocess

SPACE = """# one knob, TPE, ASHA stopping after the first epoch
objective: {weights: {ssim_t1_t1_head: 0.5, ssim_t2_t2_head: 0.5}, mode: max}
search: {sampler: tpe, num_samples: 5, max_concurrent: 1, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
checkpoint: {every: 1, keep: 2}
select: {top_k: 2}
fixed: {epochs: 3, batch_size: 4}
params:
  lr: {float: [1.0e-5, 1.0e-2], log: true}
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory):
    """One search for every assertion below (Ray on two cores is slow): (run folder, trials.csv rows by lr)."""
    tmp = tmp_path_factory.mktemp("fidelity")
    (tmp / "asha.yaml").write_text(SPACE)
    p = run("search.run", str(tmp / "asha.yaml"), *TINY, "--storage", str(tmp / "runs"), cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp / "runs" / "asha"
    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    return run_dir, {round(float(r["lr"]), 12): r for r in rows}, p.stdout


def test_optuna_is_told_pruned_for_stopped_trials_and_complete_for_finished_ones(search):
    run_dir, rows, _ = search
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == len(rows) == 5
    states = {t.state.name for t in trials}
    assert states == {"PRUNED", "COMPLETE"}, [(t.state.name, t.intermediate_values) for t in trials]
    for t in trials:
        row = rows[round(t.params["lr"], 12)]
        history = read_metrics(row["path"])
        last = int(row["last_epoch"])
        # Every epoch Tune saw is an intermediate value at that epoch, the one ASHA stopped on included.
        seen = {r["epoch"]: r["objective"] for r in history if r["epoch"] <= last}
        assert t.intermediate_values == pytest.approx(seen) and len(seen) == last
        assert t.user_attrs["epochs_run"] == last and t.value == pytest.approx(float(row["last_objective"]))
        if t.state.name == "PRUNED":
            assert row["status"] == "stopped early" and last < 3
        else:
            assert row["status"] == "finished" and last == 3


def test_tpe_still_samples_from_a_study_with_pruned_trials(search):
    run_dir, _, _ = search
    sampler = optuna.samplers.TPESampler(n_startup_trials=1, seed=1)  # past its random start: the model is used
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{run_dir / 'optuna.db'}", sampler=sampler)
    trial = study.ask()
    assert 1e-5 <= trial.suggest_float("lr", 1e-5, 1e-2, log=True) <= 1e-2


def test_the_winner_is_chosen_on_the_val_rescore_and_the_report_says_so(search):
    run_dir, rows, stdout = search
    finalists = [r for r in rows.values() if r["rescore_val_objective"]]
    assert len(finalists) == 2 and all(r["test_objective"] for r in finalists)
    assert not any(r["test_objective"] for r in rows.values() if not r["rescore_val_objective"])
    selection = json.loads((run_dir / "summary" / "selection.json").read_text())
    best = max(finalists, key=lambda r: float(r["rescore_val_objective"]))
    assert selection["winner"] == best["trial_id"] and selection["chosen_by"] == "rescore_val"
    assert json.loads((run_dir / "best" / "metrics.json").read_text())["trial_id"] == best["trial_id"]
    report = (run_dir / "summary" / "report.md").read_text()
    assert "Chosen on val" in report and "never ranked on" in report
    assert "Evaluation: paired: cross-contrast rows against the true other contrast" in report  # the phantom
    assert "val objective re-scored at full precision" in stdout
