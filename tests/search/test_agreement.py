from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from search.agreement import agreement, combinations, main, read_run, weighted


def _run(root: Path, rows: list[dict], paired: bool = True) -> Path:
    for i, row in enumerate(rows):
        d = root / f"trial_{i:03d}"
        d.mkdir(parents=True)
        first = {**row, "epoch": 1, "ssim_t1_t2_head": 0.0, "ssim_t2_t1_head": 0.0, "paired": paired}
        last = {**row, "epoch": 2, "paired": paired}
        (d / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(last) + "\n")
    return root


def _rows(n: int = 8) -> list[dict]:
    # truth rises with i; anatomy_t1_t2 tracks it, ssim_t1_t1_head runs against it, loss_G (lower is better) tracks it
    return [{"ssim_t1_t2_head": 0.1 * i, "ssim_t2_t1_head": 0.1 * i + 0.01, "anatomy_t1_t2": i ** 2,
             "ssim_t1_t1_head": -i, "loss_G": 10 - i, "objective": (i * 7) % 5} for i in range(n)]


def test_a_metric_that_tracks_the_truth_agrees_fully_and_picks_the_best(tmp_path):
    run = read_run(_run(tmp_path / "r", _rows()))
    assert len(run.trials) == 8  # the last line of each trial is used, not the first
    tracks = agreement(run, lambda m: m["anatomy_t1_t2"])
    assert tracks.rho == pytest.approx(1.0) and tracks.rank == 1 and tracks.n == 8
    against = agreement(run, lambda m: m["ssim_t1_t1_head"])
    assert against.rho == pytest.approx(-1.0) and against.rank == 8


def test_losses_count_lower_as_better_and_weighted_sums_combine(tmp_path):
    run = read_run(_run(tmp_path / "r", _rows()))
    found = combinations([run], ["loss_G", "ssim_t1_t1_head"], most=1)
    best, worst_rho = found[0]
    assert list(best) == ["loss_G"] and best["loss_G"] < 0 and worst_rho == pytest.approx(1.0)
    assert agreement(run, weighted(best)).rank == 1


def test_unpaired_runs_are_left_out_and_the_table_is_written(tmp_path, capsys):
    paired = _run(tmp_path / "paired", _rows())
    unpaired = _run(tmp_path / "unpaired", _rows(), paired=False)
    assert read_run(unpaired) is None
    out = tmp_path / "agreement.md"
    assert main([str(paired), str(unpaired), "--markdown", str(out), "--combine", "anatomy_t1_t2", "loss_G"]) == 0
    text = out.read_text()
    assert "| `anatomy_t1_t2` | +1.00 / 1 of 8 | +1.00 |" in text
    assert "left out" in capsys.readouterr().err
    assert main([str(unpaired)]) == 2
    assert main([str(tmp_path / "missing")]) == 2


def test_too_few_trials_give_no_rho(tmp_path):
    run = read_run(_run(tmp_path / "r", _rows(2)))
    assert math.isnan(agreement(run, lambda m: m["anatomy_t1_t2"]).rho)


def test_every_epoch_makes_each_epoch_a_point(tmp_path):
    run = read_run(_run(tmp_path / "r", _rows(4)), every_epoch=True)
    assert len(run.trials) == 8 and "trial_000@1" in run.trials and "trial_003@2" in run.trials
