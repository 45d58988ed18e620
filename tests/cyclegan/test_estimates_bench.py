"""`python -m benchmarks.estimates` makes a search's memory estimates in order and times them.

    python -m pytest tests/cyclegan/test_estimates_bench.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import estimates
from cyclegan.config import TrainConfig
from cyclegan.memory import DataSize, estimate_memory


def test_it_estimates_each_trial_in_order_and_traces_each_architecture_once(tmp_path: Path) -> None:
    configs = [{"resize": 32, "unet_depth": 5, "ngf": 8, "ndf": 8, "lr": 1e-4},
               {"resize": 32, "unet_depth": 5, "ngf": 8, "ndf": 8, "lr": 3e-4, "lambda_cycle": 7.0},
               {"resize": 32, "unet_depth": 4, "ngf": 8, "ndf": 8}]
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    assert estimates.main([str(tmp_path / "configs.json"), "--out", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["config"] for r in out["rows"]] == configs
    assert [r["bytes"] for r in out["rows"]] == [estimate_memory(TrainConfig(**c), DataSize.of_phantom())
                                                 for c in configs]
    assert out["rows"][1]["seconds"] < out["rows"][0]["seconds"]  # the second shares the first's trace


def test_a_run_folder_gives_its_trials_in_the_order_they_started(tmp_path: Path) -> None:
    for name, started, resize in (("trial_b", 2.0, 64), ("trial_a", 1.0, 32)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.json").write_text(json.dumps({"resize": resize, "unet_depth": 5}))
        (tmp_path / name / "resources.json").write_text(json.dumps({"started": started}))
    assert [c["resize"] for c in estimates.trial_configs(tmp_path)] == [32, 64]
    with pytest.raises(SystemExit, match="no trial_"):
        estimates.trial_configs(tmp_path / "trial_a")
