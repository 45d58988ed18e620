"""Schedules of knobs by epoch, and `python -m cyclegan.train --schedule FILE`, which replays one as a single run.

    python -m pytest tests/cyclegan/test_schedule.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cyclegan import checkpoint
from cyclegan.config import TrainConfig
from cyclegan.schedule import KNOBS, TRAINED_BY, Schedule, ScheduleError
from cyclegan.train import main

TINY = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=4, ndf=4, batch_size=4, epochs=3, pool_size=4)
# Epoch 1 by one trial; epochs 2-3 by another that continued its checkpoint with a higher lr, then a lower cycle weight.
EPOCHS = [{"epoch": 1, TRAINED_BY: "a_00000", "lr": 2e-4, "lambda_cycle": 10.0},
          {"epoch": 2, TRAINED_BY: "a_00001", "lr": 5e-4, "lambda_cycle": 10.0},
          {"epoch": 3, TRAINED_BY: "a_00001", "lr": 5e-4, "lambda_cycle": 6.0}]


def _schedule() -> Schedule:
    return Schedule.from_dict({"config": TINY.to_dict(), "knobs": ["lr", "lambda_cycle"], "epochs": EPOCHS})


def test_a_schedule_is_read_from_a_runs_rows_and_split_into_stretches() -> None:
    rows = [{"epoch": r["epoch"], TRAINED_BY: r[TRAINED_BY], "loss_G": 1.0,
             KNOBS: {"lr": r["lr"], "lambda_cycle": r["lambda_cycle"]}} for r in EPOCHS]
    schedule = Schedule.from_rows(TINY, rows)
    assert schedule == _schedule()
    assert [(last, cfg.lr, cfg.lambda_cycle) for last, cfg in schedule.stretches()] == [
        (1, 2e-4, 10.0), (2, 5e-4, 10.0), (3, 5e-4, 6.0)]
    assert [last for last, _ in schedule.stretches(after=1)] == [2, 3]
    assert schedule.lineage() == [(1, 1, "a_00000"), (2, 3, "a_00001")]
    assert Schedule.from_rows(TINY, [{"epoch": 1, "loss_G": 1.0}]) is None  # knobs that never changed


@pytest.mark.parametrize("change, match", [
    (lambda r: r["knobs"].append("ngf"), r"knobs: 'ngf' cannot change while a run trains"),
    (lambda r: r["epochs"].pop(0), r"epochs\[0\]: expected epoch 1"),
    (lambda r: r["epochs"][1].pop("lr"), r"epochs\[1\]: no value for lr"),
    (lambda r: r["epochs"][2].update(lr=-1.0), r"epochs\[2\]: lr must be > 0"),
    (lambda r: r["config"].update(unet_depth=9), r"config: unet_depth=9 needs resize"),
    (lambda r: r.pop("knobs"), r"\(top level\): expected a mapping of config, knobs and epochs"),
])
def test_a_bad_schedule_is_refused_in_one_line_naming_the_key(tmp_path: Path, change, match) -> None:
    raw = _schedule().to_dict()
    change(raw)
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ScheduleError, match=f"^{path}: {match}") as e:
        Schedule.load(path)
    assert "\n" not in str(e.value)


def test_set_may_not_change_a_scheduled_knob(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _schedule().save(tmp_path / "schedule.json")
    assert main(["--schedule", str(tmp_path / "schedule.json"), "--out", str(tmp_path / "run"),
                 "--set", "lr=1e-3"]) == 2
    assert "--set lr: the schedule" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # trains three epochs
def test_replaying_a_schedule_trains_each_epoch_with_its_knobs(tmp_path: Path) -> None:
    _schedule().save(tmp_path / "schedule.json")
    out = tmp_path / "run"
    assert main(["--schedule", str(tmp_path / "schedule.json"), "--out", str(out), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r[KNOBS]) for r in rows] == [
        (e["epoch"], {"lr": e["lr"], "lambda_cycle": e["lambda_cycle"]}) for e in EPOCHS]
    # The run is one run: its checkpoint has the last epoch's knobs, and its optimizers the last epoch's rate.
    state = checkpoint.load(out / checkpoint.CHECKPOINT)
    assert state["epoch"] == 3 and state["config"]["lr"] == 5e-4 and state["config"]["lambda_cycle"] == 6.0
    assert [g["lr"] for g in state["optim"]["g"]["param_groups"]] == [5e-4]
    assert Schedule.from_rows(TINY, rows).stretches() == _schedule().stretches()
