"""The data-size benchmark's CPU smoke run: writes a tiny phantom set, trains one trial on it in its own process,
and reports where the data went and the times (benchmarks/bigdata.py).

    python -m pytest tests/cyclegan/test_bigdata_bench.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bigdata


@pytest.mark.slow  # a trial in a subprocess
def test_bigdata_smoke_run_reports_placement_and_times(tmp_path: Path) -> None:
    out = tmp_path / "bigdata.json"
    assert bigdata.main(["--device", "cpu", "--sizes", "24", "--slices", "12", "--size", "32", "--depth", "5",
                         "--epochs", "1", "--max-steps", "2", "--data-root", str(tmp_path / "data"),
                         "--out", str(out)]) == 0
    size = json.loads(out.read_text())["sizes"]["24"]
    assert size["heads"] == 2 and size["read_s"] >= 0
    (trial,) = size["trials"]
    assert trial["placement"]["train"] == "resident" and trial["placement"]["train_dtype"] == "int16"
    assert trial["startup_s"] > 0 and len(trial["epoch_s"]) == len(trial["val_s"]) == 1
    assert (trial["steps"], trial["full_steps"]) == (2, 3)  # an epoch capped at 2 of its 3 steps, scaled up
    assert trial["full_epoch_s"][0] == pytest.approx(trial["epoch_s"][0] * 3 / 2)
    assert trial["estimate_gib"] > 0 and trial["peak_reserved_gib"] is None  # no GPU to measure on
