"""A tiny real search of two objectives: its Optuna study opened from the run's SQLite file, its Pareto front."""

from __future__ import annotations

import csv

import optuna
import pytest

from tests.search.test_run import TINY, run

pytestmark = pytest.mark.slow  # a real two-objective search in a subprocess

TWO = """# two objectives: reconstruction SSIM in the head against the cycle loss
objective: {metrics: [ssim_t1_t1_head, loss_cycle], modes: [max, min]}
search: {sampler: tpe, num_samples: 3, max_concurrent: 1, seed: 0}
scheduler: {type: none}
fixed: {epochs: 2, batch_size: 4}
params:
  lr: {float: [1.0e-4, 1.0e-3], log: true}
  lambda_cycle: {float: [1.0, 20.0]}
"""


def test_two_objective_search_keeps_its_study_in_sqlite_and_reports_the_pareto_front(tmp_path):
    space = tmp_path / "two.yaml"
    space.write_text(TWO)
    p = run("search.run", str(space), *TINY, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "two"
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    assert f"optuna-dashboard {url}" in p.stdout

    # Every trial is in the study with its knobs and both objectives as its last epoch reported them.
    with (run_dir / "summary" / "trials.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    study = optuna.load_study(study_name="two", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == len(rows) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    by_knobs = {(round(float(r["lr"]), 12), round(float(r["lambda_cycle"]), 12)): r for r in rows.values()}
    for t in trials:
        row = by_knobs[(round(t.params["lr"], 12), round(t.params["lambda_cycle"], 12))]
        assert t.values == [float(row["last_objective_0"]), float(row["last_objective_1"])]
        assert float(row["last_objective"]) == t.values[0]

    report = (run_dir / "summary" / "report.md").read_text()
    assert "## Pareto front on val" in report and "Exported: trial `" in report
    assert f"`optuna-dashboard {url}`" in report
    front = [line.split("`")[1] for line in report.splitlines() if line.startswith("| `") and "| yes |" in line]
    assert front and set(front) <= set(rows)
    assert (run_dir / "summary" / "pareto_front.png").is_file()
