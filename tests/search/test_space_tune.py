"""The searchers in a real (local, CPU) Ray Tune run: every trial's config arrives flat and builds a TrainConfig.

    python -m pytest tests/search/test_space_tune.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from cyclegan.config import TrainConfig

pytestmark = pytest.mark.slow  # Tune runs in a Ray instance

ROOT = Path(__file__).resolve().parents[2]


def fake_trainable(config: dict) -> None:
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k != "name"})  # refuses nested or unknown keys
    for epoch in (1, 2):
        tune.report({"epoch": epoch, "objective": cfg.unet_depth + epoch / 10, "resize_seen": cfg.resize})


@pytest.mark.parametrize("name", ["full.yaml", "study_v1_v4.yaml"])  # OptunaSearch, PointsSearcher
def test_trials_receive_flat_configs(local_ray: None, tmp_path: Path, name: str) -> None:
    from search.space import load_space  # here, so the trial workers that import this module skip torch

    space = load_space(ROOT / "spaces" / name).with_overrides({"epochs": 2}).replace_search(
        num_samples=2, gpus_per_trial=0, cpus_per_trial=1)
    tuner = tune.Tuner(
        tune.with_resources(fake_trainable, space.resources()),
        tune_config=space.tune_config(),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t", verbose=0,
                                  checkpoint_config=space.checkpoint_config(),
                                  failure_config=space.failure_config()),
    )
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    points = space.trial_points()
    for result in results:
        assert 2 ** result.config["unet_depth"] <= result.config["resize"] == result.metrics["resize_seen"]
        if points is not None:
            assert result.config in points
